variable "name_prefix" {
  description = "Prefix of every name, e.g. fhir-prod."
  type        = string
}

variable "cidr_block" {
  description = "CIDR block of the VPC (a /16 leaves room for the /24 subnets below)."
  type        = string
  default     = "10.40.0.0/16"
}

variable "availability_zones" {
  description = "Availability zones of the subnets, by name (2 or 3). Named rather than looked up, so that the layout does not change when AWS adds a zone."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 3
    error_message = "availability_zones must name 2 or 3 zones (RDS Multi-AZ and the ALB need two)."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones (cheaper, not zone-redundant) instead of one per zone."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "CMK encrypting the flow log group."
  type        = string
}

variable "flow_log_retention_days" {
  description = "Retention of the VPC flow log group, in days."
  type        = number
  default     = 2192
}
