variable "name_prefix" {
  description = "Prefix of every name, e.g. fhir-prod."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the service."
  type        = string
}

variable "public_subnet_ids" {
  description = "Subnets of the load balancer."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Subnets of the tasks (no public IP; outbound through NAT)."
  type        = list(string)
}

variable "database_subnet_cidrs" {
  description = "CIDR blocks of the database subnets: the tasks may open PostgreSQL connections there only."
  type        = list(string)
}

variable "ingress_cidr_blocks" {
  description = "Client networks allowed to reach the load balancer."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "certificate_arn" {
  description = "ACM certificate of the HTTPS listener."
  type        = string
}

variable "ssl_policy" {
  description = "TLS policy of the HTTPS listener (TLS 1.2 and 1.3 only)."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

variable "hsts_header_value" {
  description = "Strict-Transport-Security header the load balancer adds to every HTTPS answer."
  type        = string
  default     = "max-age=31536000; includeSubDomains"
}

variable "domain_name" {
  description = "Public name of the API (covered by the certificate); with route53_zone_id an alias record is created."
  type        = string
  default     = ""
}

variable "route53_zone_id" {
  description = "Hosted zone of domain_name (empty: no DNS record is managed here)."
  type        = string
  default     = ""
}

variable "alb_deletion_protection" {
  description = "Refuse to delete the load balancer."
  type        = bool
  default     = true
}

variable "access_log_retention_days" {
  description = "Days the load balancer's access logs are kept in S3."
  type        = number
  default     = 2192
}

variable "kms_key_arn" {
  description = "CMK of the ECR repository."
  type        = string
}

variable "logs_kms_key_arn" {
  description = "CMK of the log groups (ECS Exec session logs)."
  type        = string
}

variable "log_group_name" {
  description = "CloudWatch log group of the containers, created by the observability module (the execution role may write there only)."
  type        = string
}

variable "secret_arns" {
  description = "Secrets Manager ARN by environment variable (POSTGRES_URL, PATIENT_API_KEYS, CLIENT_REGISTRY_TOKEN): injected by ECS, never plain text."
  type        = map(string)

  validation {
    condition     = contains(keys(var.secret_arns), "POSTGRES_URL")
    error_message = "secret_arns must hold POSTGRES_URL."
  }
}

variable "read_secrets_policy_arn" {
  description = "IAM policy allowing to read exactly those secrets (attached to the execution role)."
  type        = string
}

variable "environment" {
  description = "Non-secret settings of the server (docs/configuration.md), merged over the defaults of this module."
  type        = map(string)
  default     = {}

  validation {
    condition     = length(setintersection(keys(var.environment), ["POSTGRES_URL", "PATIENT_API_KEYS", "CLIENT_REGISTRY_TOKEN"])) == 0
    error_message = "POSTGRES_URL, PATIENT_API_KEYS and CLIENT_REGISTRY_TOKEN are secrets: pass them through secret_arns, never as plain environment."
  }
}

variable "image_tag" {
  description = "Tag of the image in the ECR repository (tags are immutable: deploy a new tag, e.g. the git SHA)."
  type        = string
}

variable "container_port" {
  description = "Port the server listens on (PORT)."
  type        = number
  default     = 8080
}

variable "task_cpu" {
  description = "Fargate task CPU units."
  type        = number
  default     = 1024
}

variable "task_memory" {
  description = "Fargate task memory, in MiB."
  type        = number
  default     = 2048
}

variable "desired_count" {
  description = "Tasks at deploy time (autoscaling moves between min_count and max_count)."
  type        = number
  default     = 2
}

variable "min_count" {
  description = "Fewest tasks autoscaling keeps."
  type        = number
  default     = 2
}

variable "max_count" {
  description = "Most tasks autoscaling starts."
  type        = number
  default     = 6
}

variable "cpu_target_percent" {
  description = "Average service CPU that target tracking aims at."
  type        = number
  default     = 60
}

variable "health_check_path" {
  description = "Readiness path the load balancer checks."
  type        = string
  default     = "/readyz"
}

variable "enable_waf" {
  description = "Put an AWS WAF web ACL (managed rule groups, per-IP rate limit) in front of the load balancer."
  type        = bool
  default     = true
}

variable "waf_rate_limit" {
  description = "Requests per client IP in any 5 minutes above which WAF blocks the client."
  type        = number
  default     = 3000
}

variable "waf_log_retention_days" {
  description = "Retention of the WAF logs (a CloudWatch Logs retention value), in days."
  type        = number
  default     = 2192
}
