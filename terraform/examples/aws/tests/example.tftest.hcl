# The example wires the module to the deployment: the config file names every
# key under the alias prefix, and the ServiceAccount annotation names the
# IRSA role that kmsgate/kmsgate assumes.

mock_provider "aws" {
  override_during = plan

  mock_data "aws_caller_identity" {
    defaults = { account_id = "111122223333" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_region" {
    defaults = { region = "eu-west-1" }
  }
}

variables {
  eks_oidc_provider_arn = "arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/ABCDEF"
  issuer                = "https://kmsgate.acme.example"
}

run "wires_keys_and_identity" {
  command = plan

  assert {
    condition     = output.key_uri == "awskms:///alias/kmsgate/?region=eu-west-1"
    error_message = "key_uri is ${output.key_uri}"
  }
  assert {
    condition = yamldecode(output.kmsgate_config) == {
      issuer     = "https://kmsgate.acme.example"
      key        = ["awskms:///alias/kmsgate/?region=eu-west-1"]
      prepublish = "2h"
      refresh    = "1m"
    }
    error_message = "the config file must name the keys and the issuer: ${output.kmsgate_config}"
  }
  assert {
    condition     = output.service_account_annotations["eks.amazonaws.com/role-arn"] == "arn:aws:iam::111122223333:role/kmsgate"
    error_message = "the ServiceAccount annotation must name the IRSA role"
  }
}
