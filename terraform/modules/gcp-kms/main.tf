# A Cloud KMS signing key for kmsgate and the least-privilege identity the
# gateway runs as. The gateway itself never creates, changes or deletes keys.

locals {
  key_ring_id   = "projects/${var.project_id}/locations/${var.location}/keyRings/${var.key_ring_name}"
  crypto_key_id = "${local.key_ring_id}/cryptoKeys/${var.key_name}"

  # Every call the gcpkms backend makes, and nothing else:
  #   cryptoKeys.get                GetCryptoKey (purpose and algorithm checks)
  #   cryptoKeyVersions.list        ListCryptoKeyVersions (discover versions)
  #   cryptoKeyVersions.get         GetCryptoKeyVersion (a /cryptoKeyVersions/N URI)
  #   cryptoKeyVersions.viewPublicKey  GetPublicKey
  #   cryptoKeyVersions.useToSign   AsymmetricSign
  gateway_permissions = [
    "cloudkms.cryptoKeyVersions.get",
    "cloudkms.cryptoKeyVersions.list",
    "cloudkms.cryptoKeyVersions.useToSign",
    "cloudkms.cryptoKeyVersions.viewPublicKey",
    "cloudkms.cryptoKeys.get",
  ]
  predefined_roles = ["roles/cloudkms.signerVerifier", "roles/cloudkms.viewer"]
  custom_role_name = "projects/${var.project_id}/roles/${var.custom_role_id}"
  gateway_roles    = var.use_custom_role ? [local.custom_role_name] : local.predefined_roles

  create_service_account = var.service_account_email == null
  service_account_email  = local.create_service_account ? "${var.service_account_id}@${var.project_id}.iam.gserviceaccount.com" : var.service_account_email
  # The project of an existing service account is in its email; the default
  # compute account (NUMBER-compute@developer...) is looked up through "-".
  service_account_project = local.create_service_account ? var.project_id : try(regex("@([a-z][a-z0-9-]+)\\.iam\\.gserviceaccount\\.com$", var.service_account_email)[0], "-")
  service_account_name    = "projects/${local.service_account_project}/serviceAccounts/${local.service_account_email}"

  workload_pool   = var.workload_identity == null ? null : coalesce(var.workload_identity.pool, "${var.project_id}.svc.id.goog")
  workload_member = var.workload_identity == null ? null : "serviceAccount:${local.workload_pool}[${var.workload_identity.namespace}/${var.workload_identity.service_account}]"
}

resource "google_kms_key_ring" "this" {
  count = var.create_key_ring ? 1 : 0

  project  = var.project_id
  location = var.location
  name     = var.key_ring_name

  # Cloud KMS cannot delete key rings; destroying this only forgets it.
  lifecycle {
    prevent_destroy = true
  }
}

resource "google_kms_crypto_key" "signing" {
  name     = var.key_name
  key_ring = local.key_ring_id
  purpose  = "ASYMMETRIC_SIGN"
  labels   = var.labels

  # Versions are created by google_kms_crypto_key_version below, so that
  # rotation is a Terraform change like any other.
  skip_initial_version_creation = true
  destroy_scheduled_duration    = var.destroy_scheduled_duration

  version_template {
    algorithm        = "EC_SIGN_P256_SHA256"
    protection_level = var.protection_level
  }

  lifecycle {
    prevent_destroy = true
  }

  depends_on = [google_kms_key_ring.this]
}

resource "google_kms_crypto_key_version" "signing" {
  for_each = var.versions

  crypto_key = local.crypto_key_id
  state      = each.value.state

  depends_on = [google_kms_crypto_key.signing]
}

resource "google_service_account" "gateway" {
  count = local.create_service_account ? 1 : 0

  project      = var.project_id
  account_id   = var.service_account_id
  display_name = "kmsgate signing gateway"
  description  = "Signs JWTs with ${local.crypto_key_id}; created by the kmsgate gcp-kms Terraform module."
}

resource "google_project_iam_custom_role" "gateway" {
  count = var.use_custom_role ? 1 : 0

  project     = var.project_id
  role_id     = var.custom_role_id
  title       = "kmsgate signer"
  description = "Sign with, list and read the public keys of the versions of a CryptoKey (kmsgate)."
  permissions = local.gateway_permissions
}

# Bound on the CryptoKey only: the gateway can use no other key.
resource "google_kms_crypto_key_iam_member" "gateway" {
  for_each = toset(local.gateway_roles)

  crypto_key_id = local.crypto_key_id
  role          = each.value
  member        = "serviceAccount:${local.service_account_email}"

  depends_on = [google_kms_crypto_key.signing, google_service_account.gateway, google_project_iam_custom_role.gateway]
}

resource "google_service_account_iam_member" "workload_identity" {
  count = var.workload_identity == null ? 0 : 1

  service_account_id = local.service_account_name
  role               = "roles/iam.workloadIdentityUser"
  member             = local.workload_member

  depends_on = [google_service_account.gateway]
}
