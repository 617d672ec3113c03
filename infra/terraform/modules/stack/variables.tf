variable "environment" {
  description = "Environment name: dev, staging or prod."
  type        = string

  validation {
    condition     = contains(["dev", "staging", "prod"], var.environment)
    error_message = "environment must be dev, staging or prod."
  }
}

variable "domain_name" {
  description = "Public name of the API, covered by certificate_arn."
  type        = string
}

variable "route53_zone_id" {
  description = "Hosted zone of domain_name; empty: DNS is managed elsewhere."
  type        = string
  default     = ""
}

variable "certificate_arn" {
  description = "ACM certificate of domain_name in aws_region."
  type        = string
}

variable "ingress_cidr_blocks" {
  description = "Client networks allowed to reach the load balancer."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "alarm_email" {
  description = "Address subscribed to the alarms (empty: none)."
  type        = string
  default     = ""
}

variable "vpc_cidr" {
  description = "CIDR block of the VPC."
  type        = string
}

variable "availability_zones" {
  description = "Availability zones of the subnets, by name (2 or 3)."
  type        = list(string)
}

variable "single_nat_gateway" {
  description = "One shared NAT gateway instead of one per zone."
  type        = bool
  default     = false
}

variable "log_retention_days" {
  description = "Retention of application, flow, database and access logs, in days (six years: 2192)."
  type        = number
  default     = 2192
}

variable "kms_deletion_window_days" {
  description = "Waiting period of a KMS key deletion."
  type        = number
  default     = 30
}

variable "secret_recovery_window_days" {
  description = "Days a deleted secret can be restored."
  type        = number
  default     = 30
}

variable "deletion_protection" {
  description = "Deletion protection of the database and the load balancer."
  type        = bool
  default     = true
}

variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
}

variable "db_allocated_storage_gb" {
  description = "Initial database storage, in GiB."
  type        = number
}

variable "db_max_allocated_storage_gb" {
  description = "Database storage autoscaling ceiling, in GiB."
  type        = number
}

variable "db_multi_az" {
  description = "Multi-AZ standby of the database."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Automated backup (and point-in-time recovery) window, in days."
  type        = number
}

variable "db_connections_alarm_threshold" {
  description = "DatabaseConnections above which the alarm fires (about 80% of max_connections)."
  type        = number
}

variable "image_tag" {
  description = "Image tag to run (immutable; CI passes the release tag, e.g. -var image_tag=<git sha>)."
  type        = string
}

variable "task_cpu" {
  description = "Fargate task CPU units."
  type        = number
}

variable "task_memory" {
  description = "Fargate task memory, in MiB."
  type        = number
}

variable "desired_count" {
  description = "Tasks at deploy time."
  type        = number
}

variable "min_count" {
  description = "Fewest tasks autoscaling keeps."
  type        = number
}

variable "max_count" {
  description = "Most tasks autoscaling starts."
  type        = number
}

variable "server_settings" {
  description = "Non-secret server settings (docs/configuration.md), e.g. FHIR_AUTH_JWKS, FHIR_AUTH_ISSUER, FHIR_AUTH_AUDIENCE, CLIENT_REGISTRY_URL, FHIR_WRITES_DISABLED."
  type        = map(string)
  default     = {}
}
