variable "region" {
  description = "AWS region of the replication group these users belong to"
  type        = string
}

variable "users_secret_name" {
  description = "Secrets Manager secret (JSON: user name -> password) holding the store's ACL passwords"
  type        = string
}

variable "tags" {
  description = "Tags for every resource"
  type        = map(string)
  default     = {}
}

variable "rotation" {
  description = "Raise to push rotated ACL passwords from the secret to the users (write-only arguments)"
  type        = number
  default     = 1
}

variable "edges" {
  description = "Every edge's name (the regions of regions.yaml): one ACL user each, in every region"
  type        = list(string)
}
