# Settings terraform validate cannot see: the key's purpose, algorithm and
# protection level, the exact permissions and where they are granted, the
# Workload Identity member and the --key URI. Plans only: nothing is created,
# and the prevent_destroy keys are never destroyed by the test.

mock_provider "google" {}

variables {
  project_id = "acme-prod"
  location   = "europe-west1"
}

run "defaults" {
  command = plan

  assert {
    condition     = google_kms_crypto_key.signing.purpose == "ASYMMETRIC_SIGN"
    error_message = "the key must be an ASYMMETRIC_SIGN key"
  }
  assert {
    condition     = google_kms_crypto_key.signing.version_template[0].algorithm == "EC_SIGN_P256_SHA256"
    error_message = "the key must use EC_SIGN_P256_SHA256 (ES256)"
  }
  assert {
    condition     = google_kms_crypto_key.signing.version_template[0].protection_level == "HSM"
    error_message = "the default protection level must be HSM"
  }
  assert {
    condition     = google_kms_crypto_key.signing.key_ring == "projects/acme-prod/locations/europe-west1/keyRings/kmsgate"
    error_message = "the key must be in the kmsgate key ring of the project and location"
  }
  assert {
    condition     = google_kms_key_ring.this[0].name == "kmsgate" && google_kms_key_ring.this[0].location == "europe-west1" && google_kms_key_ring.this[0].project == "acme-prod"
    error_message = "the key ring must be created in the project and location"
  }
  assert {
    condition     = google_kms_crypto_key.signing.skip_initial_version_creation == true && keys(google_kms_crypto_key_version.signing) == ["v1"]
    error_message = "versions must be managed by google_kms_crypto_key_version, one (v1) by default"
  }
  assert {
    condition     = google_kms_crypto_key_version.signing["v1"].state == "ENABLED" && google_kms_crypto_key_version.signing["v1"].crypto_key == "projects/acme-prod/locations/europe-west1/keyRings/kmsgate/cryptoKeys/jwt-signing"
    error_message = "version v1 must be an ENABLED version of the key"
  }
  assert {
    condition     = output.key_uri == "gcpkms://projects/acme-prod/locations/europe-west1/keyRings/kmsgate/cryptoKeys/jwt-signing"
    error_message = "key_uri is ${output.key_uri}"
  }

  # Exactly the five permissions the gateway uses, in a custom role bound on
  # the CryptoKey only.
  assert {
    condition = google_project_iam_custom_role.gateway[0].permissions == toset([
      "cloudkms.cryptoKeyVersions.get",
      "cloudkms.cryptoKeyVersions.list",
      "cloudkms.cryptoKeyVersions.useToSign",
      "cloudkms.cryptoKeyVersions.viewPublicKey",
      "cloudkms.cryptoKeys.get",
    ])
    error_message = "the custom role must hold exactly the five permissions the gateway uses"
  }
  assert {
    condition     = google_project_iam_custom_role.gateway[0].role_id == "kmsgateSigner" && google_project_iam_custom_role.gateway[0].project == "acme-prod"
    error_message = "the custom role must be kmsgateSigner in the project"
  }
  assert {
    condition     = keys(google_kms_crypto_key_iam_member.gateway) == ["projects/acme-prod/roles/kmsgateSigner"]
    error_message = "the only role granted must be the custom role"
  }
  assert {
    condition = alltrue([for m in google_kms_crypto_key_iam_member.gateway :
      m.crypto_key_id == "projects/acme-prod/locations/europe-west1/keyRings/kmsgate/cryptoKeys/jwt-signing" &&
      m.member == "serviceAccount:kmsgate@acme-prod.iam.gserviceaccount.com"
    ])
    error_message = "the role must be granted to the gateway's service account on the CryptoKey"
  }
  assert {
    condition     = google_service_account.gateway[0].account_id == "kmsgate" && google_service_account.gateway[0].project == "acme-prod"
    error_message = "the gateway's service account must be created"
  }
  assert {
    condition     = length(google_service_account_iam_member.workload_identity) == 0
    error_message = "no Workload Identity binding unless asked for"
  }
  assert {
    condition     = output.service_account_annotations == { "iam.gke.io/gcp-service-account" = "kmsgate@acme-prod.iam.gserviceaccount.com" }
    error_message = "the ServiceAccount annotation must name the gateway's service account"
  }
}

run "workload_identity" {
  command = plan

  variables {
    workload_identity = {
      namespace       = "kmsgate"
      service_account = "kmsgate"
    }
  }

  assert {
    condition     = google_service_account_iam_member.workload_identity[0].role == "roles/iam.workloadIdentityUser"
    error_message = "Workload Identity needs roles/iam.workloadIdentityUser"
  }
  assert {
    condition     = google_service_account_iam_member.workload_identity[0].member == "serviceAccount:acme-prod.svc.id.goog[kmsgate/kmsgate]"
    error_message = "the member must be the Kubernetes service account in the project's workload pool"
  }
  assert {
    condition     = google_service_account_iam_member.workload_identity[0].service_account_id == "projects/acme-prod/serviceAccounts/kmsgate@acme-prod.iam.gserviceaccount.com"
    error_message = "the binding must be on the gateway's service account"
  }
}

run "software_existing_ring_and_account" {
  command = plan

  variables {
    protection_level      = "SOFTWARE"
    create_key_ring       = false
    key_ring_name         = "shared"
    key_name              = "tokens"
    service_account_email = "signer@other-project.iam.gserviceaccount.com"
    versions              = { v1 = { state = "DISABLED" }, v2 = {} }
    workload_identity     = { namespace = "auth", service_account = "gw", pool = "fleet.svc.id.goog" }
  }

  assert {
    condition     = google_kms_crypto_key.signing.version_template[0].protection_level == "SOFTWARE"
    error_message = "protection_level must be passed to the version template"
  }
  assert {
    condition     = length(google_kms_key_ring.this) == 0 && length(google_service_account.gateway) == 0
    error_message = "an existing key ring and service account must not be created"
  }
  assert {
    condition     = google_kms_crypto_key_version.signing["v1"].state == "DISABLED" && google_kms_crypto_key_version.signing["v2"].state == "ENABLED"
    error_message = "each version must get its state"
  }
  assert {
    condition     = output.key_uri == "gcpkms://projects/acme-prod/locations/europe-west1/keyRings/shared/cryptoKeys/tokens"
    error_message = "key_uri is ${output.key_uri}"
  }
  assert {
    condition     = alltrue([for m in google_kms_crypto_key_iam_member.gateway : m.member == "serviceAccount:signer@other-project.iam.gserviceaccount.com"])
    error_message = "the existing service account must get the role"
  }
  assert {
    condition     = google_service_account_iam_member.workload_identity[0].service_account_id == "projects/other-project/serviceAccounts/signer@other-project.iam.gserviceaccount.com"
    error_message = "the binding must be on the existing account, in its own project"
  }
  assert {
    condition     = google_service_account_iam_member.workload_identity[0].member == "serviceAccount:fleet.svc.id.goog[auth/gw]"
    error_message = "a given workload pool must be used"
  }
}

run "predefined_roles" {
  command = plan

  variables {
    use_custom_role = false
  }

  assert {
    condition     = length(google_project_iam_custom_role.gateway) == 0
    error_message = "no custom role when use_custom_role is false"
  }
  assert {
    condition     = keys(google_kms_crypto_key_iam_member.gateway) == ["roles/cloudkms.signerVerifier", "roles/cloudkms.viewer"]
    error_message = "the predefined roles must be signerVerifier and viewer"
  }
}

run "rejects_lower_case_protection_level" {
  command = plan

  variables {
    protection_level = "hsm"
  }

  expect_failures = [var.protection_level]
}

run "rejects_no_enabled_version" {
  command = plan

  variables {
    versions = { v1 = { state = "DISABLED" } }
  }

  expect_failures = [var.versions]
}
