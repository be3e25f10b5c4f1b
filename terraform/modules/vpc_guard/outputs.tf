output "kms_key_arn" {
  description = "the customer-managed key: the state store at rest"
  value       = aws_kms_key.this.arn
}

output "flow_log_group_arn" {
  description = "where the VPC's flow logs go"
  value       = aws_cloudwatch_log_group.flow.arn
}

output "flow_log_role_arn" {
  description = "the role VPC flow logs write with"
  value       = aws_iam_role.flow.arn
}
