# Remote state in S3 with a DynamoDB lock table (created once per account, see
# docs/infrastructure.md). Backend blocks take no variables: edit the names here, or pass
# -backend-config=... to terraform init.
terraform {
  backend "s3" {
    bucket         = "example-fhir-terraform-state"
    key            = "fhir-server/staging/terraform.tfstate"
    region         = "eu-west-1"
    dynamodb_table = "example-fhir-terraform-locks"
    encrypt        = true
    kms_key_id     = "alias/fhir-terraform-state"
  }
}
