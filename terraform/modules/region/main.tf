# One Meridian region: a small VPC, the edge as an ECS Fargate service behind a network load balancer with
# CPU autoscaling, and (in a hub region) a Redis replica of the global datastore that the edges read and
# subscribe to; a follower region's edges read the nearest hub's replica instead.
# Fargate was chosen over an autoscaling group: no AMI to patch, per-task IAM, and scaling in seconds.

data "aws_availability_zones" "this" {
  region = var.region
  state  = "available"
  filter { # the two zones by name: a zone AWS adds later never moves a subnet
    name   = "zone-name"
    values = ["${var.region}a", "${var.region}b"]
  }
}

locals {
  egress_why = { 443 = "regional clusters over TLS, AWS APIs", 6379 = "Redis replica and primary", 4317 = "OTLP traces" }
  azs        = slice(data.aws_availability_zones.this.names, 0, 2)
  hub        = var.store_role == "hub"
  redis      = { primary = var.primary_reader_endpoint, hub = one(aws_elasticache_replication_group.replica[*].primary_endpoint_address), follower = var.follow_endpoint }[var.store_role]
  edge_environment = {
    MERIDIAN_REGION                = var.region
    MERIDIAN_REGIONS_FILE          = "/etc/meridian/regions.yaml"
    MERIDIAN_REDIS_URL             = "rediss://${local.redis}:6379/0"
    MERIDIAN_REDIS_PRIMARY_URL     = "rediss://${var.primary_redis_endpoint}:6379/0"
    MERIDIAN_PORT                  = tostring(var.edge_port)
    MERIDIAN_HOST                  = "0.0.0.0"
    MERIDIAN_INTERNAL_HOST         = "0.0.0.0" # /metrics and /_meridian/route: never on the client port
    MERIDIAN_INTERNAL_PORT         = tostring(var.internal_port)
    MERIDIAN_GEOIP_DB              = "/usr/share/GeoIP/GeoLite2-City.mmdb"
    MERIDIAN_TRUSTED_PROXIES       = var.vpc_cidr
    MERIDIAN_WORKERS               = "2"
    MERIDIAN_TRACING_EXPORTER      = "otlp"
    MERIDIAN_TRACING_SAMPLE_RATIO  = "0.05"
    MERIDIAN_REGIONS_YAML_CHECKSUM = sha256(var.regions_file_content)
  }
}

resource "aws_vpc" "this" {
  region               = var.region
  cidr_block           = var.vpc_cidr
  enable_dns_hostnames = true
  tags                 = merge(var.tags, { Name = "meridian-${var.region}" })
}

resource "aws_internet_gateway" "this" {
  region = var.region
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

resource "aws_subnet" "public" {
  # checkov:skip=CKV_AWS_130:the edge's public subnets: its tasks take a public IP for egress to ECR and Secrets Manager without a NAT gateway per region; their security group admits only the edge port and the VPC
  count                   = length(local.azs)
  region                  = var.region
  vpc_id                  = aws_vpc.this.id
  availability_zone       = local.azs[count.index]
  cidr_block              = cidrsubnet(var.vpc_cidr, 4, count.index)
  map_public_ip_on_launch = true
  tags                    = merge(var.tags, { Name = "meridian-${var.region}-public-${count.index}" })
}

resource "aws_route_table" "public" {
  region = var.region
  vpc_id = aws_vpc.this.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this.id
  }

  tags = var.tags
}

resource "aws_route_table_association" "public" {
  count          = length(local.azs)
  region         = var.region
  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

resource "aws_security_group" "edge" {
  region      = var.region
  name        = "meridian-edge-${var.region}"
  description = "Meridian edge tasks: client traffic and health checks through the NLB"
  vpc_id      = aws_vpc.this.id

  ingress {
    description = "clients and health checks via the NLB (client IPs preserved)"
    from_port   = var.edge_port
    to_port     = var.edge_port
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  ingress {
    description = "metrics and the route explainer: from inside the VPC only (Prometheus, operators)"
    from_port   = var.internal_port
    to_port     = var.internal_port
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }

  dynamic "egress" {
    for_each = var.egress_ports
    content {
      description = "port ${egress.value}: ${lookup(local.egress_why, egress.value, "declared in egress_ports")}"
      from_port   = egress.value
      to_port     = egress.value
      protocol    = "tcp"
      cidr_blocks = ["0.0.0.0/0"]
    }
  }

  tags = var.tags
}

resource "aws_security_group" "redis" {
  count       = local.hub ? 1 : 0
  region      = var.region
  name        = "meridian-redis-${var.region}"
  description = "Redis replica: reachable from the edges only"
  vpc_id      = aws_vpc.this.id

  ingress {
    description     = "edges"
    from_port       = 6379
    to_port         = 6379
    protocol        = "tcp"
    security_groups = [aws_security_group.edge.id]
  }

  dynamic "ingress" {
    for_each = length(var.reader_cidrs) > 0 ? [1] : []
    content {
      description = "the edges of the follower regions that read this hub (over the regions' peering)"
      from_port   = 6379
      to_port     = 6379
      protocol    = "tcp"
      cidr_blocks = var.reader_cidrs
    }
  }

  tags = var.tags
}

resource "aws_elasticache_subnet_group" "this" {
  count      = local.hub ? 1 : 0
  region     = var.region
  name       = "meridian-${var.region}"
  subnet_ids = aws_subnet.public[*].id
}

# The regional replica of the global datastore (cross-region replication, typically < 1 s lag).
resource "aws_elasticache_replication_group" "replica" {
  count                       = local.hub ? 1 : 0
  region                      = var.region
  replication_group_id        = "meridian-${var.region}"
  description                 = "Meridian state replica in ${var.region}"
  global_replication_group_id = var.global_replication_group_id
  num_cache_clusters          = 2
  automatic_failover_enabled  = true
  transit_encryption_enabled  = true
  at_rest_encryption_enabled  = true
  kms_key_id                  = module.vpc_guard.kms_key_arn
  user_group_ids              = [module.redis_users.user_group_id]
  subnet_group_name           = aws_elasticache_subnet_group.this[0].name
  security_group_ids          = [aws_security_group.redis[0].id]
  tags                        = var.tags
}

resource "aws_ecs_cluster" "this" {
  region = var.region
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
  name = "meridian-${var.region}"
  tags = var.tags
}

resource "aws_iam_role" "task_execution" {
  name = "meridian-edge-exec-${var.region}"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "sts:AssumeRole", Principal = { Service = "ecs-tasks.amazonaws.com" } }]
  })
  managed_policy_arns = ["arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"]
  tags                = var.tags
}

data "aws_secretsmanager_secret" "api_key_secret" {
  region = var.region
  name   = var.api_key_secret_name
}

resource "aws_iam_role_policy" "read_redis_password" {
  name = "read-redis-password"
  role = aws_iam_role.task_execution.id
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = [module.redis_users.secret_arn, data.aws_secretsmanager_secret.api_key_secret.arn] }]
  })
}

module "redis_users" {
  source            = "../redis_users"
  region            = var.region
  users_secret_name = var.redis_users_secret_name
  edges             = [for r in yamldecode(var.regions_file_content).regions : r.name] # an edge per region
  tags              = var.tags
}

resource "aws_ecs_task_definition" "edge" {
  region                   = var.region
  family                   = "meridian-edge-${var.region}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 1024
  memory                   = 2048
  execution_role_arn       = aws_iam_role.task_execution.arn
  container_definitions = jsonencode([{
    name      = "edge"
    image     = var.image
    command   = ["meridian", "edge"]
    essential = true
    # nothing writes to the image's filesystem: settings come from the environment, logs go to stdout
    readonlyRootFilesystem = true
    portMappings           = [{ containerPort = var.edge_port, protocol = "tcp" }]
    environment            = [for k, v in merge(local.edge_environment, { MERIDIAN_REDIS_USERNAME = "meridian-edge-${var.region}" }) : { name = k, value = v }]
    # the edge's ACL password, injected by ECS from Secrets Manager: never in state or task definition
    secrets = [
      { name = "MERIDIAN_REDIS_PASSWORD", valueFrom = "${module.redis_users.secret_arn}:meridian-edge-${var.region}::" },
      { name = "MERIDIAN_KEY_SECRET", valueFrom = data.aws_secretsmanager_secret.api_key_secret.arn },
    ]
    healthCheck = {
      command  = ["CMD", "python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:${var.edge_port}/healthz', timeout=2)"]
      interval = 10
      retries  = 3
      timeout  = 3
    }
  }])
  tags = var.tags
}

resource "aws_lb" "edge" {
  # checkov:skip=CKV_AWS_91:an NLB logs TLS listeners only and this one passes TCP through to the edges, so there is nothing to log; each request is in the edge's metrics and traces
  region                           = var.region
  enable_deletion_protection       = var.deletion_protection
  name                             = "meridian-${var.region}"
  load_balancer_type               = "network"
  subnets                          = aws_subnet.public[*].id
  enable_cross_zone_load_balancing = true
  tags                             = var.tags
}

resource "aws_lb_target_group" "edge" {
  region             = var.region
  name               = "meridian-edge-${var.region}"
  port               = var.edge_port
  protocol           = "TCP"
  target_type        = "ip"
  vpc_id             = aws_vpc.this.id
  preserve_client_ip = "true"

  health_check {
    protocol            = "HTTP"
    path                = var.readiness_path
    port                = tostring(var.edge_port)
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = var.tags
}

resource "aws_lb_listener" "edge" {
  region            = var.region
  load_balancer_arn = aws_lb.edge.arn
  port              = var.edge_port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.edge.arn
  }
}

resource "aws_ecs_service" "edge" {
  # checkov:skip=CKV_AWS_333:a public IP is the edge tasks' egress (ECR, Secrets Manager, other regions) without a NAT gateway per region; ingress is the edge port only, clients arrive through the NLB
  region          = var.region
  name            = "meridian-edge"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.edge.arn
  desired_count   = var.desired_count
  launch_type     = "FARGATE"

  network_configuration {
    subnets          = aws_subnet.public[*].id
    security_groups  = [aws_security_group.edge.id]
    assign_public_ip = true
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.edge.arn
    container_name   = "edge"
    container_port   = var.edge_port
  }

  lifecycle {
    ignore_changes = [desired_count] # autoscaling owns it after creation
  }

  tags = var.tags
}

resource "aws_appautoscaling_target" "edge" {
  region             = var.region
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.edge.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_count
  max_capacity       = var.max_count
}

resource "aws_appautoscaling_policy" "edge_cpu" {
  region             = var.region
  name               = "meridian-edge-cpu-${var.region}"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.edge.service_namespace
  resource_id        = aws_appautoscaling_target.edge.resource_id
  scalable_dimension = aws_appautoscaling_target.edge.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value = var.cpu_target
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

module "vpc_guard" {
  source = "../vpc_guard"
  region = var.region
  name   = var.region
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
