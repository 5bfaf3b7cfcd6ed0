output "key_uri" {
  description = "The value to pass to kmsgate --key (or key: in its config file): every key whose alias is under the prefix, in the keys' region."
  value       = "awskms:///alias/${var.alias_prefix}/?region=${data.aws_region.current.region}"
}

output "region" {
  description = "Region of the keys."
  value       = data.aws_region.current.region
}

output "aliases" {
  description = "Alias of each key, by label."
  value       = { for k in keys(var.keys) : k => "alias/${var.alias_prefix}/${k}" }
}

output "key_arns" {
  description = "ARN of each key, by label."
  value       = { for k, v in aws_kms_key.signing : k => v.arn }
}

output "iam_policy_arn" {
  description = "ARN of the IAM policy to attach to whatever role the gateway runs as."
  value       = aws_iam_policy.gateway.arn
}

output "role_arn" {
  description = "ARN of the IRSA role, when irsa is set."
  value       = local.irsa_role_arn
}

output "service_account_annotations" {
  description = "Annotations for the gateway's Kubernetes ServiceAccount (IRSA); empty without irsa."
  value       = var.irsa == null ? {} : { "eks.amazonaws.com/role-arn" = local.irsa_role_arn }
}
