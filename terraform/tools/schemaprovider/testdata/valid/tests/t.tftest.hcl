mock_provider "google" {}

run "algorithm" {
  command = plan

  assert {
    condition     = google_kms_crypto_key.k.version_template[0].algorithm == "EC_SIGN_P256_SHA256"
    error_message = "algorithm is not P-256"
  }
}
