output "key_uri" {
  description = "The value to pass to kmsgate --key (or key: in its config file): every version of the CryptoKey."
  value       = "gcpkms://${local.crypto_key_id}"
}

output "crypto_key_id" {
  description = "Resource name of the CryptoKey, projects/P/locations/L/keyRings/R/cryptoKeys/K."
  value       = local.crypto_key_id
}

output "key_ring_id" {
  description = "Resource name of the key ring."
  value       = local.key_ring_id
}

output "version_ids" {
  description = "Resource names of the managed key versions, by label (known after apply)."
  value       = { for k, v in google_kms_crypto_key_version.signing : k => v.id }
}

output "service_account_email" {
  description = "The service account the gateway runs as."
  value       = local.service_account_email
}

output "roles" {
  description = "Roles the service account holds on the CryptoKey (and nowhere else)."
  value       = local.gateway_roles
}

output "permissions" {
  description = "Permissions of the custom role, when use_custom_role is true."
  value       = var.use_custom_role ? local.gateway_permissions : null
}

output "service_account_annotations" {
  description = "Annotations for the gateway's Kubernetes ServiceAccount (GKE Workload Identity)."
  value       = { "iam.gke.io/gcp-service-account" = local.service_account_email }
}
