variable "name_prefix" {
  description = "Prefix of every name, e.g. fhir-prod."
  type        = string
}

variable "app_log_group_name" {
  description = "Name of the application log group (the app module is given the same name)."
  type        = string
}

variable "kms_key_arn" {
  description = "CMK encrypting the log group and the alarm topic."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the application logs, in days. The HIPAA policy in the specification asks for six years or more: 2192 days."
  type        = number
  default     = 2192

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (e.g. 365, 731, 2192)."
  }
}

variable "alarm_email" {
  description = "Address subscribed to the alarm topic (empty: no subscription; confirm the mail AWS sends)."
  type        = string
  default     = ""
}

variable "alb_arn_suffix" {
  description = "arn_suffix of the application load balancer (CloudWatch dimension LoadBalancer)."
  type        = string
}

variable "target_group_arn_suffix" {
  description = "arn_suffix of the target group (CloudWatch dimension TargetGroup)."
  type        = string
}

variable "ecs_cluster_name" {
  description = "ECS cluster (dashboard)."
  type        = string
}

variable "ecs_service_name" {
  description = "ECS service (dashboard)."
  type        = string
}

variable "db_instance_identifier" {
  description = "RDS instance identifier (CloudWatch dimension DBInstanceIdentifier)."
  type        = string
}

variable "error_rate_threshold_percent" {
  description = "Alarm when 5xx answers exceed this share of requests over five minutes."
  type        = number
  default     = 5
}

variable "latency_p95_threshold_seconds" {
  description = "Alarm when the ALB's p95 TargetResponseTime exceeds this. The specification's GET p95 of 50 ms is per route and not visible at the ALB, which mixes reads and writes: 0.2 s is the write target, used for all requests."
  type        = number
  default     = 0.2
}

variable "db_cpu_threshold_percent" {
  description = "Alarm when the database CPU stays above this."
  type        = number
  default     = 80
}

variable "db_connections_threshold" {
  description = "Alarm when DatabaseConnections stays above this (set it to about 80% of max_connections of the instance class)."
  type        = number
  default     = 400
}
