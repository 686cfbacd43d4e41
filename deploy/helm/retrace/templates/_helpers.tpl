{{- define "retrace.labels" -}}
app.kubernetes.io/name: retrace
app.kubernetes.io/component: node-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
