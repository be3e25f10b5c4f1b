# Geo-DNS: `domain_name` has one latency record per region. Each latency record aliases a per-region
# failover pair (<region>.origin.<domain>): PRIMARY is that region's edge NLB with a Route 53 health check
# on the edges' /readyz, SECONDARY is the home region, so a region whose edges are all unready still
# answers (the failover default) while healthy regions keep serving their own clients.

resource "aws_route53_health_check" "edge" {
  for_each = var.endpoints

  fqdn              = each.value.dns_name
  port              = var.edge_port
  type              = "HTTP"
  resource_path     = var.readiness_path
  request_interval  = 10
  failure_threshold = 2
  tags              = merge(var.tags, { Name = "meridian-edge-${each.key}" })
}

resource "aws_route53_record" "origin_primary" {
  for_each = var.endpoints

  zone_id         = var.hosted_zone_id
  name            = "${each.key}.origin.${var.domain_name}"
  type            = "A"
  set_identifier  = "${each.key}-primary"
  health_check_id = aws_route53_health_check.edge[each.key].id

  failover_routing_policy {
    type = "PRIMARY"
  }

  alias {
    name                   = each.value.dns_name
    zone_id                = each.value.zone_id
    evaluate_target_health = true
  }
}

resource "aws_route53_record" "origin_secondary" {
  for_each = var.endpoints

  zone_id        = var.hosted_zone_id
  name           = "${each.key}.origin.${var.domain_name}"
  type           = "A"
  set_identifier = "${each.key}-secondary"

  failover_routing_policy {
    type = "SECONDARY"
  }

  alias {
    name                   = var.endpoints[var.home_region].dns_name
    zone_id                = var.endpoints[var.home_region].zone_id
    evaluate_target_health = true
  }
}

resource "aws_route53_record" "latency" {
  for_each = var.endpoints

  zone_id         = var.hosted_zone_id
  name            = var.domain_name
  type            = "A"
  set_identifier  = each.key
  health_check_id = aws_route53_health_check.edge[each.key].id

  latency_routing_policy {
    region = each.key
  }

  alias {
    name                   = aws_route53_record.origin_primary[each.key].fqdn
    zone_id                = var.hosted_zone_id
    evaluate_target_health = true
  }
}
