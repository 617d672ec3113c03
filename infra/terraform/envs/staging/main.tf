# staging: like prod (Multi-AZ, NAT per zone, six-year retention) on smaller instances.
# The account, region, DataClass tag and image tag are in terraform.tfvars; the wiring is
# modules/stack.

locals {
  environment = "staging" # also the Environment tag of every resource (providers.tf)
}

module "stack" {
  source = "../../modules/stack"

  environment = local.environment
  image_tag   = var.image_tag

  domain_name         = "fhir.staging.example.org"
  certificate_arn     = "arn:aws:acm:eu-west-1:222222222222:certificate/00000000-0000-0000-0000-000000000002"
  route53_zone_id     = ""            # the DNS record of domain_name is managed elsewhere
  ingress_cidr_blocks = ["0.0.0.0/0"] # public API: clients authenticate at the server
  alarm_email         = "fhir-oncall@example.org"

  vpc_cidr           = "10.41.0.0/16"
  availability_zones = ["eu-west-1a", "eu-west-1b"]
  single_nat_gateway = false

  log_retention_days          = 2192
  kms_deletion_window_days    = 30
  secret_recovery_window_days = 30
  deletion_protection         = true

  db_instance_class              = "db.m6g.large"
  db_allocated_storage_gb        = 50
  db_max_allocated_storage_gb    = 200
  db_multi_az                    = true
  db_backup_retention_days       = 14
  db_connections_alarm_threshold = 560

  task_cpu      = 1024
  task_memory   = 2048
  desired_count = 2
  min_count     = 2
  max_count     = 4

  server_settings = {
    FHIR_AUTH_JWKS     = "https://idp.staging.example.org/.well-known/jwks.json"
    FHIR_AUTH_ISSUER   = "https://idp.staging.example.org"
    FHIR_AUTH_AUDIENCE = "https://fhir.staging.example.org/fhir"
  }
}

output "stack" {
  description = "Endpoints, database, secret ARNs and ECS names of the environment (modules/stack/outputs.tf)."
  value       = module.stack
}
