# dev: single-AZ database, one NAT gateway, small tasks, shorter log retention (no real PHI).
# The account, region, DataClass tag and image tag are in terraform.tfvars; the wiring is
# modules/stack.

locals {
  environment = "dev" # also the Environment tag of every resource (providers.tf)
}

module "stack" {
  #checkov:skip=CKV_AWS_157:dev runs a single-AZ database (db_multi_az = false) to save cost; staging and prod are Multi-AZ
  source = "../../modules/stack"

  environment = local.environment
  image_tag   = var.image_tag

  domain_name         = "fhir.dev.example.org"
  certificate_arn     = "arn:aws:acm:eu-west-1:111111111111:certificate/00000000-0000-0000-0000-000000000001"
  route53_zone_id     = ""            # the DNS record of domain_name is managed elsewhere
  ingress_cidr_blocks = ["0.0.0.0/0"] # public API: clients authenticate at the server
  alarm_email         = ""            # no subscription: the alarms go to the SNS topic only

  vpc_cidr           = "10.40.0.0/16"
  availability_zones = ["eu-west-1a", "eu-west-1b"]
  single_nat_gateway = true

  log_retention_days          = 400
  kms_deletion_window_days    = 7
  secret_recovery_window_days = 7
  deletion_protection         = true

  db_instance_class              = "db.t4g.medium"
  db_allocated_storage_gb        = 20
  db_max_allocated_storage_gb    = 100
  db_multi_az                    = false
  db_backup_retention_days       = 7
  db_connections_alarm_threshold = 300

  task_cpu      = 512
  task_memory   = 1024
  desired_count = 1
  min_count     = 1
  max_count     = 2

  server_settings = {
    FHIR_AUTH_JWKS     = "https://idp.dev.example.org/.well-known/jwks.json"
    FHIR_AUTH_ISSUER   = "https://idp.dev.example.org"
    FHIR_AUTH_AUDIENCE = "https://fhir.dev.example.org/fhir"
  }
}

output "stack" {
  description = "Endpoints, database, secret ARNs and ECS names of the environment (modules/stack/outputs.tf)."
  value       = module.stack
}
