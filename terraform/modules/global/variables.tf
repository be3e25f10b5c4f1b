variable "domain_name" {
  type        = string
  description = "Public API name (latency-routed)."
}

variable "hosted_zone_id" {
  type        = string
  description = "Route 53 zone holding domain_name."
}

variable "home_region" {
  type        = string
  description = "Region every other region fails over to when its own edges are unhealthy."
}

variable "edge_port" {
  type        = number
  description = "Port of the edges' readiness endpoint."
}

variable "readiness_path" {
  type        = string
  description = "Edge readiness path probed by Route 53 health checks."
}

variable "endpoints" {
  type = map(object({
    dns_name = string
    zone_id  = string
  }))
  description = "Per-region edge load balancers (from the region module)."
}

variable "tags" {
  type        = map(string)
  description = "Tags for every resource."
}
