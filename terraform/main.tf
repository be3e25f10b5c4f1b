# Meridian on AWS: one edge service per region behind an NLB, the replicated state store (ElastiCache
# Global Datastore: primary in the home region, a replica in every other), latency-based geo-DNS with
# health checks on /readyz, and the control plane next to the primary. Regions come from regions.yaml.

locals {
  topology = yamldecode(file(var.regions_file))
  regions  = { for r in local.topology.regions : r.name => r }
  index    = { for i, name in sort(keys(local.regions)) : name => i }
  tags     = merge({ "app" = "meridian" }, var.tags)
}

module "store" {
  source = "./modules/control_plane"

  region                   = var.home_region
  regions_file_content     = file(var.regions_file)
  image                    = var.image
  redis_node_type          = var.redis_node_type
  admin_tokens_secret_name = var.admin_tokens_secret_name
  admin_certificate_arn    = var.admin_certificate_arn
  api_key_secret_name      = var.api_key_secret_name
  redis_users_secret_name  = var.redis_users_secret_name
  edge_cidrs               = [for name in keys(local.regions) : "${var.vpc_cidr_prefix}.${local.index[name] * 16}.0/20"]
  vpc_cidr                 = "${var.vpc_cidr_prefix}.240.0/20"
  tags                     = local.tags
}

module "region" {
  source   = "./modules/region"
  for_each = local.regions

  region                      = each.key
  is_home                     = each.key == var.home_region
  regions_file_content        = file(var.regions_file)
  image                       = var.image
  edge_port                   = var.edge_port
  readiness_path              = var.readiness_path
  desired_count               = var.edge_desired_count
  min_count                   = var.edge_min_count
  max_count                   = var.edge_max_count
  cpu_target                  = var.edge_cpu_target
  redis_node_type             = var.redis_node_type
  global_replication_group_id = module.store.global_replication_group_id
  primary_redis_endpoint      = module.store.primary_endpoint
  primary_reader_endpoint     = module.store.reader_endpoint
  redis_users_secret_name     = var.redis_users_secret_name
  api_key_secret_name         = var.api_key_secret_name
  vpc_cidr                    = "${var.vpc_cidr_prefix}.${local.index[each.key] * 16}.0/20"
  tags                        = local.tags
}

module "global" {
  source = "./modules/global"

  domain_name    = var.domain_name
  hosted_zone_id = var.hosted_zone_id
  home_region    = var.home_region
  edge_port      = var.edge_port
  readiness_path = var.readiness_path
  endpoints = {
    for name, m in module.region : name => {
      dns_name = m.nlb_dns_name
      zone_id  = m.nlb_zone_id
    }
  }
  tags = local.tags
}
