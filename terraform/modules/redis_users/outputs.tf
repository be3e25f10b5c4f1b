output "user_group_id" {
  description = "ElastiCache user group to attach to the region's replication group"
  value       = aws_elasticache_user_group.this.user_group_id
}

output "secret_arn" {
  description = "ARN of the passwords secret (ECS injects `<arn>:<user>::` into MERIDIAN_REDIS_PASSWORD)"
  value       = data.aws_secretsmanager_secret.users.arn
}
