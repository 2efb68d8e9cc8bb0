{{/* Names and labels of the optional gateway (gateway-*.yaml). */}}

{{- define "maap.gateway.fullname" -}}
{{- printf "%s-gateway" (include "maap.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "maap.gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "maap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "maap.gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "maap.gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: maap
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "maap.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create -}}
{{- default (include "maap.gateway.fullname" .) .Values.gateway.serviceAccount.name -}}
{{- else -}}
{{- required "gateway.serviceAccount.name is required when gateway.serviceAccount.create is false" .Values.gateway.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The file-signing secret's Secret (signed URLs through which pods fetch uploads). */}}
{{- define "maap.gateway.fileSecretName" -}}
{{- printf "%s-file-signing" (include "maap.gateway.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "maap.gateway.claimName" -}}
{{- default (printf "%s-files" (include "maap.gateway.fullname" .) | trunc 63 | trimSuffix "-") .Values.gateway.storage.existingClaim -}}
{{- end -}}

{{/* Base URL training pods fetch uploaded files from: the gateway's Service. */}}
{{- define "maap.gateway.internalUrl" -}}
{{- printf "http://%s.%s.svc:%v" (include "maap.gateway.fullname" .) .Release.Namespace .Values.gateway.port -}}
{{- end -}}
