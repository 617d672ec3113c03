variable "name_prefix" {
  description = "Prefix of every name, e.g. fhir-prod."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the database."
  type        = string
}

variable "subnet_ids" {
  description = "Isolated database subnets, in at least two zones."
  type        = list(string)
}

variable "allowed_security_group_ids" {
  description = "Security groups allowed to connect to PostgreSQL (the ECS tasks)."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "CMK for storage, Performance Insights and the master password secret."
  type        = string
}

variable "logs_kms_key_arn" {
  description = "CMK for the CloudWatch log groups of the exported PostgreSQL logs."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the exported PostgreSQL logs, in days."
  type        = number
  default     = 2192
}

variable "engine_version" {
  description = "PostgreSQL major version (minor versions are upgraded in the maintenance window)."
  type        = string
  default     = "16"
}

variable "instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.m6g.large"
}

variable "allocated_storage_gb" {
  description = "Initial storage, in GiB."
  type        = number
  default     = 50
}

variable "max_allocated_storage_gb" {
  description = "Storage autoscaling ceiling, in GiB."
  type        = number
  default     = 500
}

variable "multi_az" {
  description = "Synchronous standby in a second zone."
  type        = bool
  default     = true
}

variable "backup_retention_days" {
  description = "Days of automated backups, hence of point-in-time recovery (1-35)."
  type        = number
  default     = 35

  validation {
    condition     = var.backup_retention_days >= 1 && var.backup_retention_days <= 35
    error_message = "backup_retention_days must be between 1 and 35 (0 would turn backups and PITR off)."
  }
}

variable "deletion_protection" {
  description = "Refuse to delete the instance."
  type        = bool
  default     = true
}

variable "performance_insights_retention_days" {
  description = "Performance Insights retention: 7 (free tier) or a multiple of 31 up to 731."
  type        = number
  default     = 7
}

variable "monitoring_interval_seconds" {
  description = "Enhanced monitoring interval (1, 5, 10, 15, 30 or 60)."
  type        = number
  default     = 30
}

variable "database_name" {
  description = "Database created with the instance."
  type        = string
  default     = "fhir"
}

variable "master_username" {
  description = "Master user; its password is generated and rotated by RDS in Secrets Manager."
  type        = string
  default     = "fhir_admin"
}
