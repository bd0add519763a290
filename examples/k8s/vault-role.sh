#!/usr/bin/env bash
# Vault / OpenBao side of examples/k8s: a policy, the kubernetes auth method, and a role that
# lets the pods of service account `apps/app` log in with their projected token (audience `vault`)
# and read `secret/app/config`. Run it once, as a Vault administrator, with kubectl pointed at the
# cluster:
#
#   VAULT_ADDR=https://vault.example:8200 VAULT_TOKEN=<admin token> ./vault-role.sh
#   VAULT_CLI=bao ./vault-role.sh          # OpenBao's CLI (same commands)
#   VAULT_IN_CLUSTER=1 ./vault-role.sh     # Vault runs in this cluster (e.g. the Helm chart)
#
# Needs: vault (or bao), kubectl, jq. It is safe to run again: every step overwrites or skips.
# The JWT-auth alternative (no TokenReview call, Vault checks signatures itself) is at the end,
# commented out.
set -euo pipefail

V=${VAULT_CLI:-vault}
NAMESPACE=${NAMESPACE:-apps}          # the app's namespace (serviceaccount.yaml)
SERVICE_ACCOUNT=${SERVICE_ACCOUNT:-app}
ROLE=${ROLE:-app}                     # VAULT_K8S_ROLE in deployment.yaml
POLICY=${POLICY:-app-read}
MOUNT=${MOUNT:-kubernetes}            # VAULT_K8S_MOUNT in deployment.yaml when not `kubernetes`
REVIEWER_NAMESPACE=${REVIEWER_NAMESPACE:-vault-auth}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"

# 1. What the app may read: one KV v2 secret. `data/` is the value, `metadata/` the version
#    number the client probes before re-reading. Login, token renewal and lookup are in Vault's
#    `default` policy, which the role's tokens also get.
"$V" policy write "$POLICY" - <<HCL
path "secret/data/app/config"     { capabilities = ["read"] }
path "secret/metadata/app/config" { capabilities = ["read"] }
HCL

# 2. The kubernetes auth method: Vault sends each login's token to the API server (TokenReview)
#    and accepts it only if the API server says it is valid, for the audience the role names.
if ! "$V" auth list -format=json | jq -e --arg m "$MOUNT/" 'has($m)' >/dev/null; then
	"$V" auth enable -path="$MOUNT" kubernetes
fi

if [[ ${VAULT_IN_CLUSTER:-0} == 1 ]]; then
	# Vault runs in a pod: it reaches the API server by its service name and uses its own
	# service-account token and CA to call TokenReview. Its service account needs the
	# system:auth-delegator ClusterRole (the Vault and OpenBao Helm charts bind it by default).
	"$V" write "auth/$MOUNT/config" kubernetes_host=https://kubernetes.default.svc
else
	# Vault runs elsewhere: it needs the API server's address and CA, and a token allowed to
	# call TokenReview. Not the app's token: that one's audience is `vault`, so the API server
	# would refuse it as a bearer token (and the app would need system:auth-delegator).
	# A dedicated reviewer service account, with a long-lived token (a Secret of type
	# service-account-token): it can only create TokenReviews and SubjectAccessReviews.
	kubectl create namespace "$REVIEWER_NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
	kubectl apply -f - <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: {name: vault-token-reviewer, namespace: $REVIEWER_NAMESPACE}
automountServiceAccountToken: false
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: vault-token-reviewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:auth-delegator"}
subjects: [{kind: ServiceAccount, name: vault-token-reviewer, namespace: $REVIEWER_NAMESPACE}]
---
apiVersion: v1
kind: Secret
metadata:
  name: vault-token-reviewer
  namespace: $REVIEWER_NAMESPACE
  annotations: {kubernetes.io/service-account.name: vault-token-reviewer}
type: kubernetes.io/service-account-token
YAML
	# The token controller fills the Secret in within a second or two.
	for _ in $(seq 30); do
		kubectl -n "$REVIEWER_NAMESPACE" get secret vault-token-reviewer \
			-o jsonpath='{.data.token}' | base64 -d >"$work/reviewer.jwt"
		[[ -s $work/reviewer.jwt ]] && break
		sleep 1
	done
	[[ -s $work/reviewer.jwt ]] || { echo "the reviewer token was not issued" >&2; exit 1; }
	# The address must be reachable from Vault; the kubeconfig's is a guess (override K8S_HOST).
	K8S_HOST=${K8S_HOST:-$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')}
	kubectl -n "$NAMESPACE" get configmap kube-root-ca.crt -o jsonpath='{.data.ca\.crt}' >"$work/ca.crt"
	"$V" write "auth/$MOUNT/config" \
		kubernetes_host="$K8S_HOST" \
		kubernetes_ca_cert=@"$work/ca.crt" \
		token_reviewer_jwt=@"$work/reviewer.jwt"
fi

# 3. The role: only this service account in this namespace, only tokens issued for audience
#    `vault` (the projected volume in deployment.yaml); Vault tokens of one hour, renewable to
#    four, after which the client logs in again with the then-current projected token.
"$V" write "auth/$MOUNT/role/$ROLE" \
	bound_service_account_names="$SERVICE_ACCOUNT" \
	bound_service_account_namespaces="$NAMESPACE" \
	audience=vault \
	token_policies="$POLICY" \
	token_ttl=1h \
	token_max_ttl=4h

# 4. Demo data, if the KV v2 engine is mounted at secret/ (a dev server has it):
# "$V" kv put -mount=secret app/config api_key="$(head -c 24 /dev/urandom | base64)"

echo "role $ROLE at auth/$MOUNT: service account $NAMESPACE/$SERVICE_ACCOUNT, audience vault, policy $POLICY"

# ---------------------------------------------------------------------------------------------
# Alternative: JWT auth. Vault verifies the token's signature with the cluster's public keys and
# never calls the API server, so no reviewer token and no network path from Vault to the API
# server are needed; the price is that a token stays valid for Vault until its `exp` even if
# its pod is deleted (600 s here). In deployment.yaml set VAULT_K8S_AUTH=jwt (the mount then
# defaults to `jwt`). Use the issuer (`iss` of the tokens) either by discovery or by its keys:
#
# ISSUER=$(kubectl get --raw /.well-known/openid-configuration | jq -r .issuer)
# "$V" auth enable jwt
#
# (a) OIDC discovery: Vault fetches $ISSUER/.well-known/openid-configuration and the JWKS it
#     names, and follows key rotation. The issuer URL must be reachable from Vault, and the
#     discovery documents readable without credentials:
#   kubectl create clusterrolebinding service-account-issuer-discovery-unauthenticated \
#     --clusterrole=system:service-account-issuer-discovery --group=system:unauthenticated
#   "$V" write auth/jwt/config oidc_discovery_url="$ISSUER" \
#     oidc_discovery_ca_pem=@ca.crt   # only if the issuer's certificate is not publicly trusted
#
# (b) The JWKS URL directly (when the issuer's address is not the one Vault can reach):
#   JWKS_URI=$(kubectl get --raw /.well-known/openid-configuration | jq -r .jwks_uri)
#   "$V" write auth/jwt/config jwks_url="$JWKS_URI" jwks_ca_pem=@ca.crt bound_issuer="$ISSUER"
#
# (c) No network at all: the public keys as PEM. `kubectl get --raw /openid/v1/jwks` prints them
#     as JWKs; convert each to a PEM public key (on kubeadm clusters the same key is
#     /etc/kubernetes/pki/sa.pub on a control-plane node). Update Vault when the keys rotate.
#   "$V" write auth/jwt/config jwt_validation_pubkeys=@sa.pub bound_issuer="$ISSUER"
#
# The role: audience `vault`, subject system:serviceaccount:<namespace>:<name>.
#   "$V" write auth/jwt/role/"$ROLE" \
#     role_type=jwt \
#     bound_audiences=vault \
#     user_claim=sub \
#     bound_subject="system:serviceaccount:$NAMESPACE:$SERVICE_ACCOUNT" \
#     token_policies="$POLICY" \
#     token_ttl=1h \
#     token_max_ttl=4h
