output "global_replication_group_id" {
  description = "Global datastore every regional replica joins."
  value       = aws_elasticache_global_replication_group.state.global_replication_group_id
}

output "primary_endpoint" {
  description = "Redis primary endpoint (control plane writes, edges' observations)."
  value       = aws_elasticache_replication_group.primary.primary_endpoint_address
}

output "reader_endpoint" {
  description = "Reader endpoint of the primary group (the home region's edges read here)."
  value       = aws_elasticache_replication_group.primary.reader_endpoint_address
}

output "admin_url" {
  description = "Internal admin API URL (TLS, terminated at the load balancer)."
  value       = "https://${aws_lb.admin.dns_name}"
}
