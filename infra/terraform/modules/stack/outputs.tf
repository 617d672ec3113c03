output "url" {
  description = "HTTPS base URL of the API."
  value       = module.app.url
}

output "alb_dns_name" {
  description = "DNS name of the load balancer."
  value       = module.app.alb_dns_name
}

output "ecr_repository_url" {
  description = "Push the image here."
  value       = module.app.ecr_repository_url
}

output "db_endpoint" {
  description = "host:port of the RDS instance."
  value       = module.database.endpoint
}

output "db_master_user_secret_arn" {
  description = "RDS-managed master password secret."
  value       = module.database.master_user_secret_arn
}

output "secret_arns" {
  description = "Secrets to fill before the first deploy, by environment variable."
  value       = module.secrets.secret_arns
}

output "cluster_name" {
  description = "ECS cluster."
  value       = module.app.cluster_name
}

output "service_name" {
  description = "ECS service."
  value       = module.app.service_name
}

output "migrate_task_definition_arn" {
  description = "Run this task once per release before updating the service."
  value       = module.app.migrate_task_definition_arn
}

output "migrate_network_configuration" {
  description = "awsvpcConfiguration for aws ecs run-task of the migration."
  value = {
    subnets        = module.app.private_subnet_ids
    securityGroups = [module.app.tasks_security_group_id]
    assignPublicIp = "DISABLED"
  }
}

output "alarm_topic_arn" {
  description = "SNS topic of the alarms."
  value       = module.observability.alarm_topic_arn
}

output "dashboard_name" {
  description = "CloudWatch dashboard."
  value       = module.observability.dashboard_name
}
