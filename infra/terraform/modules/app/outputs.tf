output "url" {
  description = "HTTPS base URL of the service."
  value       = var.domain_name == "" ? "https://${aws_lb.this.dns_name}" : "https://${var.domain_name}"
}

output "alb_dns_name" {
  description = "DNS name of the load balancer (point the domain's alias here)."
  value       = aws_lb.this.dns_name
}

output "alb_zone_id" {
  description = "Hosted zone of the load balancer (for alias records)."
  value       = aws_lb.this.zone_id
}

output "alb_arn_suffix" {
  description = "CloudWatch dimension LoadBalancer."
  value       = aws_lb.this.arn_suffix
}

output "target_group_arn_suffix" {
  description = "CloudWatch dimension TargetGroup."
  value       = aws_lb_target_group.this.arn_suffix
}

output "ecr_repository_url" {
  description = "Push images here (tags are immutable)."
  value       = aws_ecr_repository.this.repository_url
}

output "cluster_name" {
  description = "ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "service_name" {
  description = "ECS service of the server."
  value       = aws_ecs_service.this.name
}

output "server_task_definition_arn" {
  description = "Task definition of the server."
  value       = aws_ecs_task_definition.server.arn
}

output "migrate_task_definition_arn" {
  description = "Task definition of the one-off migration (fhir-server migrate)."
  value       = aws_ecs_task_definition.migrate.arn
}

output "tasks_security_group_id" {
  description = "Security group of the tasks (also for the migration task)."
  value       = aws_security_group.tasks.id
}

output "private_subnet_ids" {
  description = "Subnets to run the migration task in."
  value       = var.private_subnet_ids
}

output "execution_role_arn" {
  description = "ECS task execution role."
  value       = aws_iam_role.execution.arn
}

output "task_role_arn" {
  description = "ECS task role (no permissions)."
  value       = aws_iam_role.task.arn
}
