output "api_dns_name" {
  description = "The latency-routed name clients use."
  value       = module.global.api_dns_name
}

output "edge_endpoints" {
  description = "Per-region edge load balancer DNS names."
  value       = { for name, m in module.region : name => m.nlb_dns_name }
}

output "edge_settings" {
  description = "MERIDIAN_* settings wired into each region's edge (no secrets)."
  value       = { for name, m in module.region : name => m.edge_environment }
}

output "redis_replica_endpoints" {
  description = "Per-region Redis endpoint each edge reads (replica of the global datastore)."
  value       = { for name, m in module.region : name => m.redis_endpoint }
}

output "admin_url" {
  description = "Control plane admin API (internal load balancer in the home region)."
  value       = module.store.admin_url
}
