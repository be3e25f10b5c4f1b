# The state store's ACL users in one region (ElastiCache RBAC): the same users and rules as fleet/acl.py.
# ACLs are per replication group, not replicated by the Global Datastore, so every region creates its own.
# Passwords come from one Secrets Manager secret (JSON: user name -> password), created out of band like
# the admin tokens. Terraform reads it ephemerally and hands it to write-only arguments, so the passwords
# never enter the state or the plan; the services get them injected by ARN by ECS.

locals {
  # keep in step with fleet/acl.py RULES and edge_rule (tests/test_terraform.py checks it)
  rules = {
    "meridian-controlplane" = "~meridian:* &meridian:* +@all -@dangerous +info"
    "meridian-replication"  = "+psync +replconf +ping"
  }
  # one user per edge (named by its region), writing in its own name only: every replication group holds
  # every edge's user (an edge writes to the primary's group and reads its own region's)
  edge_rules = {
    for e in var.edges : "meridian-edge-${e}" => "resetchannels &meridian:state:changes %R~meridian:state:* %W~meridian:observations:${e} %W~meridian:applied:${e} %W~meridian:active:${e} ~meridian:cancel:${e} ~meridian:limits:* ~meridian:usage:${e}:* ~meridian:traffic:${e}:* ~meridian:wake:* -@all +@read +@connection +subscribe +unsubscribe +multi +exec +discard +xadd +evalsha +eval +script|load +hincrby +expire +hset +hdel +pexpire +time"
  }
}

data "aws_secretsmanager_secret" "users" {
  region = var.region
  name   = var.users_secret_name
}

ephemeral "aws_secretsmanager_secret_version" "users" {
  region    = var.region
  secret_id = data.aws_secretsmanager_secret.users.id
}

resource "aws_elasticache_user" "default_off" {
  region        = var.region
  user_id       = "meridian-default-${var.region}"
  user_name     = "default"
  access_string = "off -@all"
  engine        = "redis"

  authentication_mode {
    type = "no-password-required"
  }
  tags = var.tags
}

resource "aws_elasticache_user" "this" {
  for_each      = local.rules
  region        = var.region
  user_id       = "${each.key}-${var.region}"
  user_name     = each.key
  access_string = "on ${each.value}"
  engine        = "redis"

  authentication_mode {
    type = "password"
  }
  # write-only: taken from the ephemeral secret at apply, never stored; bump the version to rotate
  passwords_wo         = [jsondecode(ephemeral.aws_secretsmanager_secret_version.users.secret_string)[each.key]]
  passwords_wo_version = var.rotation
  tags                 = var.tags
}

resource "aws_elasticache_user" "edge" {
  for_each      = local.edge_rules
  region        = var.region
  user_id       = "edge-${trimprefix(each.key, "meridian-edge-")}-${var.region}" # user ids: 40 characters at most
  user_name     = each.key
  access_string = "on ${each.value}"
  engine        = "redis"

  authentication_mode {
    type = "password"
  }
  passwords_wo         = [jsondecode(ephemeral.aws_secretsmanager_secret_version.users.secret_string)[each.key]]
  passwords_wo_version = var.rotation
  tags                 = var.tags
}

resource "aws_elasticache_user_group" "this" {
  region        = var.region
  engine        = "redis"
  user_group_id = "meridian-${var.region}"
  user_ids = concat(
    [aws_elasticache_user.default_off.user_id],
    [for u in aws_elasticache_user.this : u.user_id],
    [for u in aws_elasticache_user.edge : u.user_id],
  )
  tags = var.tags
}
