# A Vault Transit signing key for kmsgate, the policy the gateway needs and,
# optionally, the auth roles that hand that policy to the gateway. The gateway
# itself never creates, changes or deletes keys.

locals {
  policy_name = coalesce(var.policy_name, "kmsgate-${var.key_name}")

  # What the vault backend calls, and nothing else: read the key (its
  # versions and their public keys) and sign with it.
  policy = <<-EOT
    # kmsgate: read the versions and public keys of Transit key ${var.key_name}
    # and sign with it. Nothing else: not rotate, not configure, not export.
    path "${var.mount_path}/keys/${var.key_name}" {
      capabilities = ["read"]
    }

    path "${var.mount_path}/sign/${var.key_name}" {
      capabilities = ["update"]
    }
  EOT

  key_uri = var.mount_path == "transit" ? "hashivault://${var.key_name}" : "hashivault://${var.key_name}?mount=${var.mount_path}"
}

resource "vault_mount" "transit" {
  count = var.create_mount ? 1 : 0

  namespace   = var.namespace
  path        = var.mount_path
  type        = "transit"
  description = "Transit secrets engine holding the kmsgate signing key"
}

resource "vault_transit_secret_backend_key" "signing" {
  namespace = var.namespace
  backend   = var.mount_path
  name      = var.key_name
  type      = "ecdsa-p256"

  # The private key never leaves Vault, and the key cannot be deleted
  # (Vault refuses until deletion_allowed is set to true in a separate step).
  deletion_allowed       = false
  exportable             = false
  allow_plaintext_backup = false

  auto_rotate_period     = var.auto_rotate_period
  min_decryption_version = var.min_decryption_version

  depends_on = [vault_mount.transit]
}

resource "vault_policy" "gateway" {
  namespace = var.namespace
  name      = local.policy_name
  policy    = local.policy
}

resource "vault_kubernetes_auth_backend_role" "gateway" {
  count = var.kubernetes_auth == null ? 0 : 1

  namespace                        = var.namespace
  backend                          = var.kubernetes_auth.backend
  role_name                        = var.kubernetes_auth.role_name
  bound_service_account_names      = var.kubernetes_auth.service_account_names
  bound_service_account_namespaces = var.kubernetes_auth.namespaces
  audience                         = var.kubernetes_auth.audience
  token_policies                   = [vault_policy.gateway.name]
  token_ttl                        = var.kubernetes_auth.token_ttl
  token_max_ttl                    = var.kubernetes_auth.token_max_ttl
}

resource "vault_approle_auth_backend_role" "gateway" {
  count = var.approle == null ? 0 : 1

  namespace             = var.namespace
  backend               = var.approle.backend
  role_name             = var.approle.role_name
  token_policies        = [vault_policy.gateway.name]
  token_ttl             = var.approle.token_ttl
  token_max_ttl         = var.approle.token_max_ttl
  secret_id_ttl         = var.approle.secret_id_ttl
  token_bound_cidrs     = var.approle.token_bound_cidrs
  secret_id_bound_cidrs = var.approle.secret_id_bound_cidrs
}
