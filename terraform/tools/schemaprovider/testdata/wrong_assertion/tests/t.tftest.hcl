mock_provider "google" {}

run "algorithm" {
  command = plan

  assert {
    condition     = google_kms_crypto_key.k.version_template[0].algorithm == "EC_SIGN_P384_SHA384"
    error_message = "WRONG-ASSERTION-CAUGHT"
  }
}
