output "api_dns_name" {
  description = "The latency-routed API name."
  value       = var.domain_name
}

output "health_check_ids" {
  description = "Route 53 health check per region."
  value       = { for k, hc in aws_route53_health_check.edge : k => hc.id }
}
