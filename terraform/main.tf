# Meridian on AWS: one edge service per region behind an NLB, the replicated state store (ElastiCache
# Global Datastore: primary in the home region, a replica in every other), latency-based geo-DNS with
# health checks on /readyz, and the control plane next to the primary. Regions come from regions.yaml.

locals {
  topology = yamldecode(file(var.regions_file))
  regions  = { for r in local.topology.regions : r.name => r }
  index    = { for i, name in sort(keys(local.regions)) : name => i }
  tags     = merge({ "app" = "meridian" }, var.tags)

  # The state store's layout. An ElastiCache Global Datastore replicates its primary to at most two other
  # regions: those are the hubs (store_hubs, or the first two other regions by name). Every other region
  # follows the nearest of the home region and the hubs (by latitude and longitude: HCL has no
  # trigonometry, and the nearest is what matters) and its edges read that replica across regions.
  others           = [for name in sort(keys(local.regions)) : name if name != var.home_region]
  hubs             = length(var.store_hubs) > 0 ? var.store_hubs : slice(local.others, 0, min(2, length(local.others)))
  store_regions    = concat([var.home_region], local.hubs)
  follower_regions = [for name in local.others : name if !contains(local.hubs, name)]
  follows = {
    for name in local.follower_regions : name => local.store_regions[index(
      [for s in local.store_regions : pow(local.regions[name].location.lat - local.regions[s].location.lat, 2) + pow(local.regions[name].location.lon - local.regions[s].location.lon, 2)],
      min([for s in local.store_regions : pow(local.regions[name].location.lat - local.regions[s].location.lat, 2) + pow(local.regions[name].location.lon - local.regions[s].location.lon, 2)]...)
    )]
  }
}

# An impossible layout stops the plan with one message, before anything is created.
resource "terraform_data" "store_layout" {
  lifecycle {
    precondition {
      condition     = contains(keys(local.regions), var.home_region)
      error_message = "home_region ${var.home_region} is not a region of ${var.regions_file}."
    }
    precondition {
      condition     = alltrue([for h in local.hubs : contains(local.others, h)])
      error_message = "store_hubs must name regions of ${var.regions_file} other than the home region (got ${join(", ", local.hubs)})."
    }
  }
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
  for_each = { for name in local.store_regions : name => local.regions[name] }

  region                      = each.key
  store_role                  = each.key == var.home_region ? "primary" : "hub"
  reader_cidrs                = [for f, hub in local.follows : "${var.vpc_cidr_prefix}.${local.index[f] * 16}.0/20" if hub == each.key]
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

# Regions beyond the Global Datastore's reach: their edges read the nearest hub's replica (or the primary's
# reader) across regions; no replica of their own.
module "follower" {
  source   = "./modules/region"
  for_each = { for name in local.follower_regions : name => local.regions[name] }

  region                      = each.key
  store_role                  = "follower"
  follow_endpoint             = module.region[local.follows[each.key]].redis_endpoint
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
    for name, m in merge(module.region, module.follower) : name => {
      dns_name = m.nlb_dns_name
      zone_id  = m.nlb_zone_id
    }
  }
  tags = local.tags
}
