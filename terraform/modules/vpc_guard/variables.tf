variable "region" {
  description = "AWS region of the VPC"
  type        = string
}

variable "name" {
  description = "what the VPC is for, in resource names (a region's name, or control-plane)"
  type        = string
}

variable "tags" {
  description = "tags for every resource"
  type        = map(string)
  default     = {}
}
