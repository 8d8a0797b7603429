{{/*
Name of the chart, for the app.kubernetes.io/name label. Label values are
limited to 63 characters.
*/}}
{{- define "medcloud.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified name, the prefix of every object name.

Truncated to 46 characters: Service names must be DNS-1035 labels (at most
63 characters), and the longest suffix the chart appends to a Service name is
"-operator-metrics" (17 characters); 63 - 17 = 46. Other objects allow longer
names, so this one limit keeps them all valid. A release name that already
contains the chart name is used as it is, so `helm install medcloud` names
objects medcloud-operator and medcloud-api (the names in deploy/*.yaml), not
medcloud-medcloud-operator.
*/}}
{{- define "medcloud.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 46 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Chart name and version for the helm.sh/chart label ("+" is not allowed in label values). */}}
{{- define "medcloud.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels of every object: the app.kubernetes.io/* set, the chart, and the
user's commonLabels. Called with (dict "ctx" $ "component" "operator");
component may be empty for objects that belong to the whole release.
*/}}
{{- define "medcloud.labels" -}}
{{ include "medcloud.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: medcloud
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ include "medcloud.chart" .ctx }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The labels a selector matches: never the version or chart, which change on
upgrade, while a Deployment's selector is immutable.
*/}}
{{- define "medcloud.selectorLabels" -}}
app.kubernetes.io/name: {{ include "medcloud.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/*
The ServiceAccount a component runs as: created by the chart (named after the
release unless a name is given), or an existing one reused by name.
Called with (dict "ctx" $ "component" "operator"|"api"), or for the key
service (dict "ctx" $ "component" "keyservice" "values" "keyService"): its
objects are named "-keyservice" (as in deploy/keyservice-rbac.yaml) while its
values live under keyService.
*/}}
{{- define "medcloud.serviceAccountName" -}}
{{- $sa := (index .ctx.Values (default .component .values)).serviceAccount -}}
{{- if $sa.create -}}
{{- default (printf "%s-%s" (include "medcloud.fullname" .ctx) .component) $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end -}}

{{/* The image reference: a digest pins it; otherwise the tag, defaulting to the chart's appVersion. */}}
{{- define "medcloud.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The key service's in-cluster URL, through its Service: https when
keyService.tls.secretName is set. What the operator writes into the stores'
credentials Secrets unless operator.config.keyServiceUrl says otherwise.
*/}}
{{- define "medcloud.keyServiceUrl" -}}
{{- $ks := .Values.keyService -}}
{{- printf "%s://%s-keyservice.%s.svc:%d" (ternary "https" "http" (not (empty $ks.tls.secretName))) (include "medcloud.fullname" .) .Release.Namespace (int $ks.service.port) -}}
{{- end -}}

{{/* Name of the ClusterKopfPeering (or KopfPeerings) the operator replicas coordinate through. */}}
{{- define "medcloud.peeringName" -}}
{{- default (include "medcloud.fullname" .) .Values.operator.peering.name -}}
{{- end -}}

{{/*
Settings as environment variables: each key of a values map becomes
<prefix><KEY_IN_UPPER_SNAKE_CASE>, the names pydantic-settings reads. Lists
and maps are JSON (how pydantic-settings parses complex fields); whole
numbers are printed as integers, because YAML numbers reach templates as
floats and 1000000 would otherwise become "1e+06", which an int field
rejects. A null value is left out, so the setting keeps its default.
Called with (dict "prefix" "MEDCLOUD_" "config" .Values.operator.config).
*/}}
{{- define "medcloud.configEnv" -}}
{{- $prefix := .prefix -}}
{{- range $key, $value := .config }}
{{- if not (kindIs "invalid" $value) }}
- name: {{ printf "%s%s" $prefix ($key | snakecase | upper) }}
  {{- if or (kindIs "slice" $value) (kindIs "map" $value) }}
  value: {{ toJson $value | quote }}
  {{- else if and (kindIs "float64" $value) (eq $value (floor $value)) }}
  value: {{ int64 $value | toString | quote }}
  {{- else }}
  value: {{ toString $value | quote }}
  {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Pod anti-affinity that prefers one replica per node, used when the user sets
no affinity: losing a node should never take every replica with it.
Called with (dict "ctx" $ "component" "operator"|"api") or, for the key
service, (dict "ctx" $ "component" "keyservice" "values" "keyService").
*/}}
{{- define "medcloud.affinity" -}}
{{- $values := index .ctx.Values (default .component .values) -}}
{{- if $values.affinity -}}
{{ toYaml $values.affinity }}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "medcloud.selectorLabels" . | nindent 12 }}
{{- end -}}
{{- end -}}

{{/*
Combinations of values the schema cannot express, refused with a message
that says what to change. Included once, from the operator's Deployment.
*/}}
{{- define "medcloud.validate" -}}
{{- $op := .Values.operator -}}
{{- if gt (int $op.replicaCount) 1 -}}
{{- if not $op.peering.enabled -}}
{{- fail "operator.replicaCount > 1 needs operator.peering.enabled=true: standalone replicas would all reconcile the same objects at once." -}}
{{- end -}}
{{- end -}}
{{- if and $op.peering.enabled $op.peering.create -}}
{{- range $op.config.namespaces -}}
{{- if regexMatch "[*?\\[]" . -}}
{{- fail (printf "operator.config.namespaces has the glob %q: with peering, Kopf coordinates through a KopfPeering in every served namespace, and the chart cannot create one in namespaces it cannot name. List namespaces by name, or create the KopfPeerings yourself and set operator.peering.create=false." .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled .Values.networkPolicy.egress.enabled (not .Values.networkPolicy.egress.apiServerCidrs) -}}
{{- fail "networkPolicy.egress.enabled needs networkPolicy.egress.apiServerCidrs: without them neither the operator nor the API could reach the Kubernetes API." -}}
{{- end -}}
{{- end -}}

{{/*
The analytics writer's lake settings (MEDCLOUD_ANALYTICS_*, read by `medcloud analytics`), the same for its
load and publish steps; the MinIO key from its Secret, never a value.
Called with (dict "writer" .Values.analyticsWriter "secret" <Secret name> "endpoint" <host:port>).
*/}}
{{- define "medcloud.analyticsWriterEnv" -}}
- name: MEDCLOUD_ANALYTICS_ENDPOINT
  value: {{ .endpoint | quote }}
- name: MEDCLOUD_ANALYTICS_BUCKET
  value: {{ .writer.bucket | quote }}
- name: MEDCLOUD_ANALYTICS_SECURE
  value: {{ .writer.secure | quote }}
- name: MEDCLOUD_ANALYTICS_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .writer.credentials.accessKeyKey }}
- name: MEDCLOUD_ANALYTICS_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .writer.credentials.secretKeyKey }}
{{- end -}}
