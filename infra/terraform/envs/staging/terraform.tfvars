# staging: like prod (Multi-AZ, NAT per zone, six-year retention) on smaller instances.
environment     = "staging"
aws_region      = "eu-west-1"
aws_account_id  = "222222222222"
domain_name     = "fhir.staging.example.org"
certificate_arn = "arn:aws:acm:eu-west-1:222222222222:certificate/00000000-0000-0000-0000-000000000002"
alarm_email     = "fhir-oncall@example.org"

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

image_tag     = "0.1.0" # CI passes the release tag: -var image_tag=<git sha>
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
