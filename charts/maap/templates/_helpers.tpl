{{/* Names, labels and images shared by the templates. */}}

{{- define "maap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "maap.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "maap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "maap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "maap.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "maap.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: maap
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "maap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "maap.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "maap.operatorImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "maap.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) -}}
{{- end -}}

{{/* Base URL pods use to reach the operator's progress endpoint: its Service. */}}
{{- define "maap.progressUrl" -}}
{{- printf "http://%s.%s.svc:%v" (include "maap.fullname" .) .Release.Namespace .Values.ports.progress -}}
{{- end -}}

{{/* The operator's RBAC rules, generated from operator/maap/rbac.py (`make generate`). */}}
{{- define "maap.rules" -}}
{{- .Files.Get "files/rbac-rules.yaml" -}}
{{- end -}}

{{/* The Kopf peering object of this release's operator replicas. */}}
{{- define "maap.peeringName" -}}
{{- include "maap.fullname" . -}}
{{- end -}}
