output "data_kms_key_arn" {
  description = "ARN of the CMK for data at rest (RDS, Secrets Manager, ECR)."
  value       = aws_kms_key.data.arn
}

output "logs_kms_key_arn" {
  description = "ARN of the CMK for CloudWatch Logs and the alarm topic."
  value       = aws_kms_key.logs.arn
}

output "secret_arns" {
  description = "Secret ARN by the environment variable it fills."
  value       = { for name, secret in aws_secretsmanager_secret.this : name => secret.arn }
}

output "read_secrets_policy_arn" {
  description = "IAM policy allowing to read exactly these secrets."
  value       = aws_iam_policy.read_secrets.arn
}
