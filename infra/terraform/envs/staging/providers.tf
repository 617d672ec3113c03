terraform {
  required_version = ">= 1.6.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.90"
    }
  }
}

provider "aws" {
  region              = var.aws_region
  allowed_account_ids = [var.aws_account_id]

  default_tags {
    tags = {
      Service     = "fhir-server"
      Environment = local.environment
      ManagedBy   = "terraform"
      DataClass   = var.data_classification
    }
  }
}
