variable "name_prefix" {
  description = "Prefix of every name, e.g. fhir-prod."
  type        = string
}

variable "kms_deletion_window_days" {
  description = "Waiting period before a scheduled KMS key deletion takes effect (7-30)."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days must be between 7 and 30."
  }
}

variable "secret_recovery_window_days" {
  description = "Days a deleted secret can still be restored (0 deletes at once; 7-30 otherwise)."
  type        = number
  default     = 30
}

variable "secrets" {
  description = "Secrets Manager secrets to create, keyed by the environment variable the server reads. Terraform creates the containers only; the values are put by an operator (docs/infrastructure.md), never written in Terraform."
  type        = map(string)
  default = {
    POSTGRES_URL          = "PostgreSQL connection URL of the application user, with sslmode=require"
    PATIENT_API_KEYS      = "API keys of /api/v1/patients, name:key,name2:key2"
    CLIENT_REGISTRY_TOKEN = "Bearer token the Client Registry accepts"
  }
}
