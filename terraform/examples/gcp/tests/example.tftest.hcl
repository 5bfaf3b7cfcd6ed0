# The example wires the module to the deployment: the config file names the
# key, and the ServiceAccount annotation names the Google service account
# that Workload Identity lets kmsgate/kmsgate act as.

mock_provider "google" {}

variables {
  project_id = "acme-prod"
  issuer     = "https://kmsgate.acme.example"
}

run "wires_key_and_identity" {
  command = plan

  assert {
    condition     = output.key_uri == "gcpkms://projects/acme-prod/locations/europe-west1/keyRings/kmsgate/cryptoKeys/jwt-signing"
    error_message = "key_uri is ${output.key_uri}"
  }
  assert {
    condition = yamldecode(output.kmsgate_config) == {
      issuer     = "https://kmsgate.acme.example"
      key        = ["gcpkms://projects/acme-prod/locations/europe-west1/keyRings/kmsgate/cryptoKeys/jwt-signing"]
      prepublish = "2h"
      refresh    = "1m"
    }
    error_message = "the config file must name the key and the issuer: ${output.kmsgate_config}"
  }
  assert {
    condition     = module.kmsgate_key.service_account_annotations["iam.gke.io/gcp-service-account"] == "kmsgate@acme-prod.iam.gserviceaccount.com"
    error_message = "the ServiceAccount annotation must name the Google service account"
  }
  assert {
    condition     = module.kmsgate_key.roles == tolist(["projects/acme-prod/roles/kmsgateSigner"])
    error_message = "the gateway must get only the custom signer role"
  }
}
