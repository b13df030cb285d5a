{{/* Chart name. */}}
{{- define "exfm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/* Full name prefix of every resource: <release>-<chart> unless the release name contains the chart name. */}}
{{- define "exfm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "exfm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "exfm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: exfm
{{- end }}

{{- define "exfm.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "exfm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "exfm.minioSelectorLabels" -}}
app.kubernetes.io/name: {{ include "exfm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: minio
{{- end }}

{{- define "exfm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-operator" (include "exfm.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "exfm.operatorImage" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "exfm.trainerImage" -}}
{{- printf "%s:%s" .Values.operator.trainerImage.repository (default .Chart.AppVersion .Values.operator.trainerImage.tag) }}
{{- end }}

{{- define "exfm.minioName" -}}
{{- printf "%s-minio" (include "exfm.fullname" .) }}
{{- end }}

{{/* The S3 endpoint: storage.endpoint, else the bundled MinIO Service; fails when neither is set. */}}
{{- define "exfm.storageEndpoint" -}}
{{- if .Values.storage.endpoint }}
{{- .Values.storage.endpoint }}
{{- else if .Values.minio.enabled }}
{{- printf "http://%s.%s.svc:9000" (include "exfm.minioName" .) .Release.Namespace }}
{{- else }}
{{- fail "storage.endpoint is empty and minio.enabled is false: set storage.endpoint (e.g. http://minio.storage:9000) or minio.enabled=true" }}
{{- end }}
{{- end }}

{{/* The credentials Secret: storage.credentialsSecret.name, else the bundled MinIO's; fails when neither. */}}
{{- define "exfm.credentialsSecret" -}}
{{- if .Values.storage.credentialsSecret.name }}
{{- .Values.storage.credentialsSecret.name }}
{{- else if .Values.minio.enabled }}
{{- include "exfm.minioName" . }}
{{- else }}
{{- fail "storage.credentialsSecret.name is empty and minio.enabled is false: name a Secret holding the S3 access and secret keys" }}
{{- end }}
{{- end }}

{{- define "exfm.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "exfm.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}
