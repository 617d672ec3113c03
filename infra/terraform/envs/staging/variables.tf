# What terraform.tfvars sets; the rest of the environment is the module "stack" call in main.tf.

variable "aws_region" {
  description = "AWS region of the environment."
  type        = string
}

variable "aws_account_id" {
  description = "The only AWS account this configuration may touch."
  type        = string
}

variable "data_classification" {
  description = "Tag DataClass on every resource: phi where real patient data is held, else synthetic."
  type        = string
}

variable "image_tag" {
  description = "Image tag to run (immutable; CI passes the release tag, e.g. -var image_tag=<git sha>)."
  type        = string
}
