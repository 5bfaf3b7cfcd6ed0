output "key_uri" {
  description = "The value to pass to kmsgate --key (or key: in its config file): every version of the Transit key."
  value       = local.key_uri
}

output "policy_name" {
  description = "Name of the Vault policy with exactly what the gateway needs."
  value       = vault_policy.gateway.name
}

output "policy" {
  description = "The policy document."
  value       = local.policy
}

output "kubernetes_role_name" {
  description = "Role to log in with on the Kubernetes auth mount, when kubernetes_auth is set."
  value       = var.kubernetes_auth == null ? null : var.kubernetes_auth.role_name
}

output "approle_role_id" {
  description = "RoleID of the AppRole role, when approle is set (known after apply)."
  value       = var.approle == null ? null : vault_approle_auth_backend_role.gateway[0].role_id
}
