# KMS customer managed keys (rotation on, explicit key policies), the Secrets Manager secrets the
# server reads (encrypted with the data key) and an IAM policy that lets a role read only them.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  root_arn   = "arn:${local.partition}:iam::${local.account_id}:root"
}

# Data key: RDS storage and Performance Insights, the RDS master password secret, the
# application secrets and the ECR repository.
resource "aws_kms_key" "data" {
  description             = "${var.name_prefix}: data at rest (RDS, Secrets Manager, ECR)"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = var.kms_deletion_window_days

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministersKeyThroughIAM"
        Effect    = "Allow"
        Principal = { AWS = local.root_arn }
        Action    = "kms:*"
        Resource  = "*"
      },
    ]
  })
}

resource "aws_kms_alias" "data" {
  name          = "alias/${var.name_prefix}-data"
  target_key_id = aws_kms_key.data.key_id
}

# Logs key: CloudWatch Logs groups (application, VPC flow logs, RDS exports) and the alarm topic.
resource "aws_kms_key" "logs" {
  description             = "${var.name_prefix}: CloudWatch Logs and alarm notifications"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = var.kms_deletion_window_days

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministersKeyThroughIAM"
        Effect    = "Allow"
        Principal = { AWS = local.root_arn }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "CloudWatchLogsOfThisAccount"
        Effect    = "Allow"
        Principal = { Service = "logs.${local.region}.amazonaws.com" }
        Action = [
          "kms:Encrypt*",
          "kms:Decrypt*",
          "kms:ReEncrypt*",
          "kms:GenerateDataKey*",
          "kms:Describe*",
        ]
        Resource = "*"
        Condition = {
          ArnLike = {
            "kms:EncryptionContext:aws:logs:arn" = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"
          }
        }
      },
      {
        Sid       = "CloudWatchAlarmsPublishToEncryptedTopic"
        Effect    = "Allow"
        Principal = { Service = "cloudwatch.amazonaws.com" }
        Action    = ["kms:Decrypt", "kms:GenerateDataKey*"]
        Resource  = "*"
        Condition = {
          StringEquals = { "aws:SourceAccount" = local.account_id }
        }
      },
    ]
  })
}

resource "aws_kms_alias" "logs" {
  name          = "alias/${var.name_prefix}-logs"
  target_key_id = aws_kms_key.logs.key_id
}

# Only the containers: no aws_secretsmanager_secret_version here, so no secret value ever enters
# the Terraform code or state. Rotation is the runbook in docs/operations.md.
resource "aws_secretsmanager_secret" "this" {
  #checkov:skip=CKV2_AWS_57:the values come from outside AWS (API keys, registry token, an application user URL): no rotation Lambda can make them; rotated by the runbook
  for_each = var.secrets

  name                    = "${var.name_prefix}/${lower(replace(each.key, "_", "-"))}"
  description             = each.value
  kms_key_id              = aws_kms_key.data.arn
  recovery_window_in_days = var.secret_recovery_window_days
}

data "aws_iam_policy_document" "read_secrets" {
  statement {
    sid       = "ReadTheServerSecretsOnly"
    effect    = "Allow"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [for secret in aws_secretsmanager_secret.this : secret.arn]
  }

  statement {
    sid       = "DecryptThemThroughSecretsManagerOnly"
    effect    = "Allow"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.data.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_policy" "read_secrets" {
  name        = "${var.name_prefix}-read-secrets"
  description = "Read the FHIR server's Secrets Manager secrets (attached to the ECS task execution role)"
  policy      = data.aws_iam_policy_document.read_secrets.json
}
