variable "regions_file" {
  type        = string
  description = "Path to regions.yaml, the topology shared with the edges and the control plane."
  default     = "../regions.yaml"
}

variable "home_region" {
  type        = string
  description = "Region that hosts the control plane and the Redis primary (must be a region in regions.yaml)."
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}-[a-z]+-[0-9]$", var.home_region))
    error_message = "home_region must be an AWS region name such as us-east-1."
  }
}

variable "domain_name" {
  type        = string
  description = "Public API name that clients resolve (latency-routed), e.g. api.example.com."

  validation {
    condition     = can(regex("^[a-z0-9.-]+\\.[a-z]{2,}$", var.domain_name))
    error_message = "domain_name must be a DNS name such as api.example.com."
  }
}

variable "hosted_zone_id" {
  type        = string
  description = "Route 53 hosted zone that holds domain_name."
}

variable "image" {
  type        = string
  description = "Container image built from terraform/Dockerfile (edge and control plane share it)."
}

variable "edge_port" {
  type        = number
  description = "Port the edge listens on; equals MERIDIAN_PORT's default in edge/settings.py."
  default     = 8080

  validation {
    condition     = var.edge_port > 0 && var.edge_port < 65536
    error_message = "edge_port must be a TCP port."
  }
}

variable "readiness_path" {
  type        = string
  description = "Edge readiness endpoint probed by load balancers and Route 53; equals the edge's /readyz."
  default     = "/readyz"

  validation {
    condition     = startswith(var.readiness_path, "/")
    error_message = "readiness_path must start with /."
  }
}

variable "edge_desired_count" {
  type        = number
  description = "Edge tasks per region at start; autoscaling moves between edge_min_count and edge_max_count."
  default     = 2
}

variable "edge_min_count" {
  type        = number
  description = "Minimum edge tasks per region."
  default     = 2

  validation {
    condition     = var.edge_min_count >= 1
    error_message = "Keep at least one edge per region."
  }
}

variable "edge_max_count" {
  type        = number
  description = "Maximum edge tasks per region."
  default     = 20
}

variable "edge_cpu_target" {
  type        = number
  description = "Target average CPU utilization (percent) for edge autoscaling."
  default     = 60

  validation {
    condition     = var.edge_cpu_target > 10 && var.edge_cpu_target < 95
    error_message = "edge_cpu_target must be between 10 and 95."
  }
}

variable "admin_tokens_secret_name" {
  type        = string
  description = "Name of the Secrets Manager secret holding MERIDIAN_ADMIN_TOKENS (JSON). Only its ARN reaches the task definition; the value never enters Terraform state."
  default     = "meridian/admin-tokens"
}

variable "admin_certificate_arn" {
  type        = string
  description = "ACM certificate of the admin API's name: its load balancer listens with TLS only (port 443) and terminates it there."
}

variable "api_key_secret_name" {
  type        = string
  description = "Name of the Secrets Manager secret holding MERIDIAN_KEY_SECRET: the HMAC secret of API-key digests, the same for the control plane and every edge. Only its ARN reaches the task definitions."
  default     = "meridian/api-key-secret"
}

variable "redis_node_type" {
  type        = string
  description = "ElastiCache node type for the global datastore's primary and regional replicas."
  default     = "cache.r7g.large"
}

variable "vpc_cidr_prefix" {
  type        = string
  description = "First octet pair of each region's VPC; region i gets <prefix>.<i*16>.0.0/20 style ranges."
  default     = "10.40"
}

variable "tags" {
  type        = map(string)
  description = "Tags applied to every resource."
  default     = {}
}

variable "redis_users_secret_name" {
  description = "Secrets Manager secret holding the state store's ACL passwords as JSON {\"meridian-controlplane\": \"...\", \"meridian-edge-<region>\": \"...\" for every region, \"meridian-replication\": \"...\"}; create it before apply, like the admin tokens"
  type        = string
  default     = "meridian/redis-users"
}

variable "store_hubs" {
  type        = list(string)
  description = "Regions (besides the home region) whose Redis replica joins the ElastiCache Global Datastore; the other regions' edges read the nearest of these or the home region. Empty: the first two other regions by name."
  default     = []

  validation {
    condition     = length(var.store_hubs) <= 2
    error_message = "ElastiCache Global Datastore replicates its primary to at most two other regions: name at most two store_hubs (every other region's edges read the nearest hub)."
  }
}
