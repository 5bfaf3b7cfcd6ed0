#!/usr/bin/env bash
# Checks every Terraform module and example offline: terraform fmt -check,
# then for each one terraform init -backend=false, validate and test.
#
# The Terraform registry is not reachable from CI, so providers come from a
# filesystem mirror built here: the schema-only provider in
# terraform/tools/schemaprovider, installed once per committed schema
# (schemas/NAME_VERSION.json) as terraform-provider-NAME_vVERSION. Nothing
# outside the repository is needed, and nothing is written into it: the
# configurations are copied to WORKDIR before init.
#
# usage: terraform/tools/check.sh [WORKDIR]
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=${1:-$(mktemp -d "${TMPDIR:-/tmp}/kmsgate-tf.XXXXXX")}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# Terraform 1.11 or later: terraform test's override_during needs it.
if ! command -v terraform >/dev/null 2>&1; then
  echo "terraform/tools/check.sh: terraform is not on PATH; install Terraform 1.11 or later (https://developer.hashicorp.com/terraform/install) to check the modules" >&2
  exit 1
fi
tf_version=$(terraform version -json | sed -n 's/.*"terraform_version": *"\([0-9.]*\)".*/\1/p')
tf_major=${tf_version%%.*}
tf_minor=${tf_version#*.}
tf_minor=${tf_minor%%.*}
if [ -z "$tf_version" ] || [ "$tf_major" -lt 1 ] || { [ "$tf_major" -eq 1 ] && [ "$tf_minor" -lt 11 ]; }; then
  echo "terraform/tools/check.sh: terraform ${tf_version:-of unknown version} is too old; need 1.11 or later" >&2
  exit 1
fi

echo "terraform: building the schema-only provider mirror in $WORK" >&2
(cd terraform/tools/schemaprovider && CGO_ENABLED=0 go build -trimpath -o "$WORK/bin/schemaprovider" .)
platform="$(go env GOOS)_$(go env GOARCH)"
mirror="$WORK/mirror"
providers=0
while read -r name version; do
  dir="$mirror/registry.terraform.io/hashicorp/$name/$version/$platform"
  mkdir -p "$dir"
  cp "$WORK/bin/schemaprovider" "$dir/terraform-provider-${name}_v${version}"
  providers=$((providers + 1))
done < <("$WORK/bin/schemaprovider" list)
[ "$providers" -gt 0 ] || { echo "terraform/tools/check.sh: no committed provider schemas" >&2; exit 1; }

# Only the mirror: no direct installation, so a provider that is not
# committed fails init instead of reaching for the network.
cat >"$WORK/terraformrc" <<EOF
provider_installation {
  filesystem_mirror {
    path    = "$mirror"
    include = ["registry.terraform.io/hashicorp/*"]
  }
}
EOF
export TF_CLI_CONFIG_FILE="$WORK/terraformrc"
export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0
unset TF_PLUGIN_CACHE_DIR TF_DATA_DIR

echo "terraform: fmt -check" >&2
terraform fmt -check -recursive -diff terraform

rm -rf "$WORK/src"
mkdir -p "$WORK/src"
cp -R terraform/modules terraform/examples "$WORK/src/"
find "$WORK/src" \( -name .terraform -o -name .terraform.lock.hcl -o -name 'terraform.tfstate*' \) -prune -exec rm -rf {} +

checked=0
for dir in "$WORK"/src/modules/*/ "$WORK"/src/examples/*/; do
  [ -d "$dir" ] || continue
  rel=${dir#"$WORK/src/"}
  rel=terraform/${rel%/}
  ls "$dir"/tests/*.tftest.hcl >/dev/null 2>&1 || { echo "$rel: no tests/*.tftest.hcl" >&2; exit 1; }
  echo "terraform: $rel: init, validate, test" >&2
  terraform -chdir="$dir" init -backend=false -input=false -no-color >"$WORK/init.log" 2>&1 || { cat "$WORK/init.log" >&2; echo "$rel: terraform init failed" >&2; exit 1; }
  terraform -chdir="$dir" validate -no-color
  terraform -chdir="$dir" test -no-color
  checked=$((checked + 1))
done
[ "$checked" -ge 6 ] || { echo "terraform/tools/check.sh: checked only $checked modules and examples, want at least 6" >&2; exit 1; }
echo "terraform: $checked modules and examples passed" >&2
