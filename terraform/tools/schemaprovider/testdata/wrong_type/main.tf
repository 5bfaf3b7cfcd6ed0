resource "google_kms_crypto_key" "k" {
  name     = "k"
  key_ring = "projects/p/locations/l/keyRings/r"
  purpose  = "ASYMMETRIC_SIGN"
  labels   = ["auth"]

  version_template {
    algorithm        = "EC_SIGN_P256_SHA256"
    protection_level = "HSM"
  }
}
