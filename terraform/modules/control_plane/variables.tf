variable "region" {
  type        = string
  description = "Home region: the control plane and the Redis primary."
}

variable "regions_file_content" {
  type        = string
  description = "regions.yaml content (baked into the image); its checksum rolls the control plane on change."
}

variable "image" {
  type        = string
  description = "Meridian container image."
}

variable "redis_node_type" {
  type        = string
  description = "ElastiCache node type of the primary group."
}

variable "admin_certificate_arn" {
  type        = string
  description = "ACM certificate the admin API's TLS listener presents."
}

variable "admin_tokens_secret_name" {
  type        = string
  description = "Secrets Manager secret with MERIDIAN_ADMIN_TOKENS; injected by ECS from its ARN, never read into state."
}

variable "vpc_cidr" {
  type        = string
  description = "CIDR of the control plane VPC."

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

variable "edge_cidrs" {
  description = "CIDRs of the edges' VPCs, allowed to reach the primary on 6379 (observation appends)"
  type        = list(string)
}

variable "deletion_protection" {
  description = "the admin load balancer refuses deletion until this is turned off"
  type        = bool
  default     = true
}
