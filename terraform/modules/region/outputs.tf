output "nlb_dns_name" {
  description = "DNS name of the region's edge load balancer."
  value       = aws_lb.edge.dns_name
}

output "nlb_zone_id" {
  description = "Hosted zone of the load balancer (for Route 53 aliases)."
  value       = aws_lb.edge.zone_id
}

output "redis_endpoint" {
  description = "Redis endpoint the edge reads (regional replica, or the primary group's reader in the home region)."
  value       = local.redis
}

output "edge_environment" {
  description = "MERIDIAN_* settings of the edge (no secrets)."
  value       = local.edge_environment
}
