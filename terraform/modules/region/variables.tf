variable "region" {
  type        = string
  description = "AWS region of this Meridian region (its name in regions.yaml)."
}

variable "store_role" {
  type        = string
  description = "The region's part in the state store: primary (the home region: its edges read the primary group's reader), hub (a Global Datastore replica here), follower (its edges read follow_endpoint)."

  validation {
    condition     = contains(["primary", "hub", "follower"], var.store_role)
    error_message = "store_role must be primary, hub or follower."
  }
}

variable "follow_endpoint" {
  type        = string
  description = "A follower's Redis endpoint: the nearest hub's replica or the primary's reader (other roles: unused)."
  default     = ""
}

variable "regions_file_content" {
  type        = string
  description = "regions.yaml content (baked into the image); its checksum in the task definition rolls the edges when it changes."
}

variable "image" {
  type        = string
  description = "Meridian container image."
}

variable "edge_port" {
  type        = number
  description = "Container and health-check port of the edge."
}

variable "internal_port" {
  type        = number
  default     = 7150
  description = "The edge's internal listener (/metrics, /_meridian/route): reachable from inside the VPC only, never through the load balancer."
}

variable "readiness_path" {
  type        = string
  description = "Edge readiness path used by the NLB target group health check."
}

variable "desired_count" {
  type        = number
  description = "Initial edge task count."
}

variable "min_count" {
  type        = number
  description = "Autoscaling minimum."
}

variable "max_count" {
  type        = number
  description = "Autoscaling maximum."
}

variable "cpu_target" {
  type        = number
  description = "Autoscaling target CPU percent."
}

variable "redis_node_type" {
  type        = string
  description = "ElastiCache node type of this region's replica."
}

variable "global_replication_group_id" {
  type        = string
  description = "Global datastore this region's replica joins."
}

variable "primary_redis_endpoint" {
  type        = string
  description = "Primary endpoint (observations are written there, best effort)."
}

variable "primary_reader_endpoint" {
  type        = string
  description = "Reader endpoint of the primary group, used by the home region's edge."
}

variable "vpc_cidr" {
  type        = string
  description = "CIDR of this region's VPC."

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0))
    error_message = "vpc_cidr must be a CIDR block."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags for every resource."
}

variable "api_key_secret_name" {
  type        = string
  description = "Secrets Manager secret with MERIDIAN_KEY_SECRET (API-key digests); injected by ECS from its ARN."
}

variable "redis_users_secret_name" {
  description = "Secrets Manager secret (JSON: ACL user name -> password) for the state store's users"
  type        = string
}

variable "egress_ports" {
  description = "TCP ports the edge tasks may reach anywhere: 443 (regional clusters over TLS, AWS APIs), 6379 (Redis), 4317 (OTLP); add a region's plain port (vLLM's 8000) if it serves without TLS"
  type        = list(number)
  default     = [443, 6379, 4317]
}

variable "deletion_protection" {
  description = "the load balancer refuses deletion until this is turned off"
  type        = bool
  default     = true
}

variable "reader_cidrs" {
  type        = list(string)
  description = "A hub's readers beyond its own edges: the VPC CIDRs of the follower regions that read its replica."
  default     = []
}
