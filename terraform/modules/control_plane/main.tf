# The home region: the Redis primary (head of an ElastiCache Global Datastore that every region's replica
# joins) and the control plane (admin API + health prober) as a Fargate service on an internal NLB.
# Admin tokens come from Secrets Manager by ARN: ECS injects the value, Terraform never sees it.

data "aws_secretsmanager_secret" "admin_tokens" {
  region = var.region
  name   = var.admin_tokens_secret_name
}

data "aws_secretsmanager_secret" "api_key_secret" {
  region = var.region
  name   = var.api_key_secret_name
}

data "aws_availability_zones" "this" {
  region = var.region
  state  = "available"
  filter { # the two zones by name: a zone AWS adds later never moves a subnet
    name   = "zone-name"
    values = ["${var.region}a", "${var.region}b"]
  }
}

locals {
  azs = slice(data.aws_availability_zones.this.names, 0, 2)
}

resource "aws_vpc" "this" {
  region               = var.region
  cidr_block           = var.vpc_cidr
  enable_dns_hostnames = true
  tags                 = merge(var.tags, { Name = "meridian-control-plane" })
}

resource "aws_subnet" "private" {
  count             = length(local.azs)
  region            = var.region
  vpc_id            = aws_vpc.this.id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, count.index)
  tags              = var.tags
}

resource "aws_security_group" "control_plane" {
  region      = var.region
  name        = "meridian-control-plane"
  description = "Admin API: from inside the VPC (its internal NLB), on its port only"
  vpc_id      = aws_vpc.this.id

  ingress {
    description = "admin API"
    from_port   = 8700
    to_port     = 8700
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }

  egress {
    description = "probes and scrapes of the regional clusters over TLS, AWS APIs"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  egress {
    description = "the Redis primary"
    from_port   = 6379
    to_port     = 6379
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }

  tags = var.tags
}

resource "aws_security_group" "redis" {
  region      = var.region
  name        = "meridian-redis-primary"
  description = "Redis primary: the control plane, and the edges' observation appends, on 6379 only"
  vpc_id      = aws_vpc.this.id

  ingress {
    description     = "control plane"
    from_port       = 6379
    to_port         = 6379
    protocol        = "tcp"
    security_groups = [aws_security_group.control_plane.id]
  }

  ingress {
    description = "edges (observations; their ACL user can append to that stream and nothing else)"
    from_port   = 6379
    to_port     = 6379
    protocol    = "tcp"
    cidr_blocks = var.edge_cidrs
  }

  tags = var.tags
}

module "redis_users" {
  source            = "../redis_users"
  region            = var.region
  users_secret_name = var.redis_users_secret_name
  edges             = [for r in yamldecode(var.regions_file_content).regions : r.name] # an edge per region
  tags              = var.tags
}

resource "aws_elasticache_subnet_group" "primary" {
  region     = var.region
  name       = "meridian-primary"
  subnet_ids = aws_subnet.private[*].id
}

# The state store's Redis settings, as the demo and the test fleets run them (meridian/redisproc.py): a
# state store never evicts (limits, budgets, usage and routing intent are data, not cache). ElastiCache
# keeps no AOF on Redis 7: durability is Multi-AZ replication with automatic failover plus daily snapshots,
# so the AOF replay of a self-run Redis 7.0 (transactions re-checked against the default user's ACL,
# fleet/acl.py) does not arise here.
resource "aws_elasticache_parameter_group" "state" {
  region      = var.region
  name        = "meridian-state-redis7"
  family      = "redis7"
  description = "Meridian state store: never evict"

  parameter {
    name  = "maxmemory-policy"
    value = "noeviction"
  }
  tags = var.tags
}

resource "aws_elasticache_replication_group" "primary" {
  region                     = var.region
  replication_group_id       = "meridian-primary"
  description                = "Meridian state store primary"
  engine                     = "redis"
  engine_version             = "7.1"
  parameter_group_name       = aws_elasticache_parameter_group.state.name
  node_type                  = var.redis_node_type
  num_cache_clusters         = 2
  automatic_failover_enabled = true
  multi_az_enabled           = true
  transit_encryption_enabled = true
  at_rest_encryption_enabled = true
  kms_key_id                 = module.vpc_guard.kms_key_arn
  user_group_ids             = [module.redis_users.user_group_id]
  snapshot_retention_limit   = 7 # backups: operator intent survives losing the primary's memory
  subnet_group_name          = aws_elasticache_subnet_group.primary.name
  security_group_ids         = [aws_security_group.redis.id]
  tags                       = var.tags
}

resource "aws_elasticache_global_replication_group" "state" {
  region                             = var.region
  global_replication_group_id_suffix = "meridian"
  primary_replication_group_id       = aws_elasticache_replication_group.primary.id
}

resource "aws_ecs_cluster" "this" {
  region = var.region
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
  name = "meridian-control-plane"
  tags = var.tags
}

resource "aws_iam_role" "task_execution" {
  name = "meridian-control-plane-exec"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "sts:AssumeRole", Principal = { Service = "ecs-tasks.amazonaws.com" } }]
  })
  managed_policy_arns = ["arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"]
  tags                = var.tags
}

resource "aws_iam_role_policy" "read_admin_tokens" {
  name = "read-admin-tokens"
  role = aws_iam_role.task_execution.id
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = [data.aws_secretsmanager_secret.admin_tokens.arn, data.aws_secretsmanager_secret.api_key_secret.arn, module.redis_users.secret_arn] }]
  })
}

resource "aws_ecs_task_definition" "control_plane" {
  region                   = var.region
  family                   = "meridian-control-plane"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 512
  memory                   = 1024
  execution_role_arn       = aws_iam_role.task_execution.arn
  container_definitions = jsonencode([{
    name      = "controlplane"
    image     = var.image
    command   = ["meridian", "controlplane"]
    essential = true
    # nothing writes to the image's filesystem: settings come from the environment, logs go to stdout
    readonlyRootFilesystem = true
    portMappings           = [{ containerPort = 8700, protocol = "tcp" }]
    environment = [
      { name = "MERIDIAN_REDIS_URL", value = "rediss://${aws_elasticache_replication_group.primary.primary_endpoint_address}:6379/0" },
      { name = "MERIDIAN_REDIS_USERNAME", value = "meridian-controlplane" },
      { name = "MERIDIAN_HOST", value = "0.0.0.0" },
      { name = "MERIDIAN_PORT", value = "8700" },
      { name = "MERIDIAN_REGIONS_FILE", value = "/etc/meridian/regions.yaml" },
      { name = "MERIDIAN_REGIONS_YAML_CHECKSUM", value = sha256(var.regions_file_content) },
    ]
    secrets = [
      { name = "MERIDIAN_ADMIN_TOKENS", valueFrom = data.aws_secretsmanager_secret.admin_tokens.arn },
      { name = "MERIDIAN_KEY_SECRET", valueFrom = data.aws_secretsmanager_secret.api_key_secret.arn },
      { name = "MERIDIAN_REDIS_PASSWORD", valueFrom = "${module.redis_users.secret_arn}:meridian-controlplane::" },
    ]
  }])
  tags = var.tags
}

resource "aws_lb" "admin" {
  # checkov:skip=CKV_AWS_91:every admin write is in the audit log (actor, reason, before and after) and the control plane logs each request; NLB logs would need a bucket without a KMS key (log delivery cannot use one) for a second copy of the same facts
  region                           = var.region
  enable_deletion_protection       = var.deletion_protection
  enable_cross_zone_load_balancing = true
  name                             = "meridian-admin"
  internal                         = true
  load_balancer_type               = "network"
  subnets                          = aws_subnet.private[*].id
  tags                             = var.tags
}

resource "aws_lb_target_group" "admin" {
  region      = var.region
  name        = "meridian-admin"
  port        = 8700
  protocol    = "TCP"
  target_type = "ip"
  vpc_id      = aws_vpc.this.id

  health_check {
    protocol = "HTTP"
    path     = "/readyz"
    port     = "8700"
  }

  tags = var.tags
}

# TLS only: the listener terminates it with the ACM certificate (no plain-text listener exists)
resource "aws_lb_listener" "admin" {
  region            = var.region
  load_balancer_arn = aws_lb.admin.arn
  port              = 443
  protocol          = "TLS"
  certificate_arn   = var.admin_certificate_arn
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.admin.arn
  }
}

resource "aws_ecs_service" "control_plane" {
  region          = var.region
  name            = "meridian-control-plane"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.control_plane.arn
  desired_count   = 1 # one prober writer; ECS replaces it on failure
  launch_type     = "FARGATE"

  network_configuration {
    subnets         = aws_subnet.private[*].id
    security_groups = [aws_security_group.control_plane.id]
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.admin.arn
    container_name   = "controlplane"
    container_port   = 8700
  }

  tags = var.tags
}

module "vpc_guard" {
  source = "../vpc_guard"
  region = var.region
  name   = "control-plane"
  tags   = var.tags
}

resource "aws_flow_log" "this" {
  region          = var.region
  vpc_id          = aws_vpc.this.id
  traffic_type    = "ALL"
  log_destination = module.vpc_guard.flow_log_group_arn
  iam_role_arn    = module.vpc_guard.flow_log_role_arn
  tags            = var.tags
}

resource "aws_default_security_group" "this" { # no rules: nothing can use it by accident
  region = var.region
  vpc_id = aws_vpc.this.id
  tags   = var.tags
}
