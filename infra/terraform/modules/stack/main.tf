# One environment of the FHIR server: the five modules wired together. envs/dev, envs/staging and
# envs/prod each call this module once with their own values (sizes, Multi-AZ, retention, counts).

locals {
  name_prefix = "fhir-${var.environment}"
  # Named here so that the app (which logs there) does not depend on observability (which creates
  # the group and watches the app): the two modules would otherwise refer to each other.
  app_log_group_name = "/ecs/${local.name_prefix}/fhir-server"
}

module "secrets" {
  source = "../secrets"

  name_prefix                 = local.name_prefix
  kms_deletion_window_days    = var.kms_deletion_window_days
  secret_recovery_window_days = var.secret_recovery_window_days
}

module "network" {
  source = "../network"

  name_prefix             = local.name_prefix
  cidr_block              = var.vpc_cidr
  availability_zones      = var.availability_zones
  single_nat_gateway      = var.single_nat_gateway
  kms_key_arn             = module.secrets.logs_kms_key_arn
  flow_log_retention_days = var.log_retention_days
}

module "database" {
  source = "../database"

  name_prefix                = local.name_prefix
  vpc_id                     = module.network.vpc_id
  subnet_ids                 = module.network.database_subnet_ids
  allowed_security_group_ids = [module.app.tasks_security_group_id]
  kms_key_arn                = module.secrets.data_kms_key_arn
  logs_kms_key_arn           = module.secrets.logs_kms_key_arn
  log_retention_days         = var.log_retention_days
  instance_class             = var.db_instance_class
  allocated_storage_gb       = var.db_allocated_storage_gb
  max_allocated_storage_gb   = var.db_max_allocated_storage_gb
  multi_az                   = var.db_multi_az
  backup_retention_days      = var.db_backup_retention_days
  deletion_protection        = var.deletion_protection
}

module "observability" {
  source = "../observability"

  name_prefix              = local.name_prefix
  app_log_group_name       = local.app_log_group_name
  kms_key_arn              = module.secrets.logs_kms_key_arn
  log_retention_days       = var.log_retention_days
  alarm_email              = var.alarm_email
  alb_arn_suffix           = module.app.alb_arn_suffix
  target_group_arn_suffix  = module.app.target_group_arn_suffix
  ecs_cluster_name         = module.app.cluster_name
  ecs_service_name         = module.app.service_name
  db_instance_identifier   = module.database.instance_identifier
  db_connections_threshold = var.db_connections_alarm_threshold
}

module "app" {
  source = "../app"

  name_prefix               = local.name_prefix
  vpc_id                    = module.network.vpc_id
  public_subnet_ids         = module.network.public_subnet_ids
  private_subnet_ids        = module.network.private_subnet_ids
  database_subnet_cidrs     = module.network.database_subnet_cidrs
  ingress_cidr_blocks       = var.ingress_cidr_blocks
  certificate_arn           = var.certificate_arn
  domain_name               = var.domain_name
  route53_zone_id           = var.route53_zone_id
  alb_deletion_protection   = var.deletion_protection
  access_log_retention_days = var.log_retention_days
  waf_log_retention_days    = var.log_retention_days
  kms_key_arn               = module.secrets.data_kms_key_arn
  logs_kms_key_arn          = module.secrets.logs_kms_key_arn
  log_group_name            = local.app_log_group_name
  secret_arns               = module.secrets.secret_arns
  read_secrets_policy_arn   = module.secrets.read_secrets_policy_arn
  image_tag                 = var.image_tag
  task_cpu                  = var.task_cpu
  task_memory               = var.task_memory
  desired_count             = var.desired_count
  min_count                 = var.min_count
  max_count                 = var.max_count

  environment = merge(var.server_settings, {
    FHIR_BASE_URL = "https://${var.domain_name}/fhir"
  })
}
