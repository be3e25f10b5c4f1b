# Deploy Meridian for every region in the repository's regions.yaml.
# The admin tokens secret must exist first:
#   aws secretsmanager create-secret --name meridian/admin-tokens --secret-string file://tokens.json

module "meridian" {
  source = "../.."

  regions_file   = "${path.module}/../../../regions.yaml"
  home_region    = "us-east-1"
  domain_name    = "api.example.com"
  hosted_zone_id = "Z0123456789EXAMPLE"
  image          = "123456789012.dkr.ecr.us-east-1.amazonaws.com/meridian:0.1.0"

  admin_certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
}

output "api" {
  value = module.meridian.api_dns_name
}
