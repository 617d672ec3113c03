# prod: Multi-AZ database with 35 days of point-in-time recovery, three zones with a NAT gateway
# each, six-year log retention (HIPAA policy of the specification).
# The account, region, DataClass tag and image tag are in terraform.tfvars; the wiring is
# modules/stack.

locals {
  environment = "prod" # also the Environment tag of every resource (providers.tf)
}

module "stack" {
  source = "../../modules/stack"

  environment = local.environment
  image_tag   = var.image_tag

  domain_name         = "fhir.example.org"
  certificate_arn     = "arn:aws:acm:eu-west-1:333333333333:certificate/00000000-0000-0000-0000-000000000003"
  route53_zone_id     = ""            # the DNS record of domain_name is managed elsewhere
  ingress_cidr_blocks = ["0.0.0.0/0"] # public API: clients authenticate at the server
  alarm_email         = "fhir-oncall@example.org"

  vpc_cidr           = "10.42.0.0/16"
  availability_zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
  single_nat_gateway = false

  log_retention_days          = 2192
  kms_deletion_window_days    = 30
  secret_recovery_window_days = 30
  deletion_protection         = true

  db_instance_class              = "db.m6g.xlarge"
  db_allocated_storage_gb        = 100
  db_max_allocated_storage_gb    = 1000
  db_multi_az                    = true
  db_backup_retention_days       = 35
  db_connections_alarm_threshold = 1300

  task_cpu      = 1024
  task_memory   = 2048
  desired_count = 3
  min_count     = 3
  max_count     = 12

  server_settings = {
    FHIR_AUTH_JWKS     = "https://idp.example.org/.well-known/jwks.json"
    FHIR_AUTH_ISSUER   = "https://idp.example.org"
    FHIR_AUTH_AUDIENCE = "https://fhir.example.org/fhir"
  }
}

output "stack" {
  description = "Endpoints, database, secret ARNs and ECS names of the environment (modules/stack/outputs.tf)."
  value       = module.stack
}
